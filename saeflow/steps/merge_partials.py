"""Workflow step "merge_partials": one batch of shard partials -> one merged partial.

A child of the ``MergePartials`` Distributed Map, whose ItemBatcher hands it
``{"Items": [{"shard": int}, ...], "BatchInput": {"run_id", "bucket"}}``. Reads
``runs/<id>/partials/shard-NNNNN.json.gz`` of each item, merges them (one at a time in
memory), and writes ``runs/<id>/partials/batches/from-NNNNN.json.gz`` (named by the batch's
first shard). Returns ``{"batch_key", "shards", "partial_bytes"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from saeflow.core import layout
from saeflow.core.errors import ExtractionFailed
from saeflow.ports import ObjectStore
from saeflow.steps.partials import merge_stored, write_partial

logger = logging.getLogger(__name__)


def run(event: Mapping[str, Any], *, store: ObjectStore) -> dict[str, Any]:
    items = event.get("Items")
    batch_input = event.get("BatchInput") or {}
    if not isinstance(items, list) or not items or "run_id" not in batch_input:
        raise ExtractionFailed("merge_partials needs {Items: [{shard}], BatchInput: {run_id}}")
    run_id = str(batch_input["run_id"])
    shards = sorted(int(item["shard"]) for item in items)
    merged = merge_stored(store, [layout.shard_partial_key(run_id, s) for s in shards])
    key = layout.batch_partial_key(run_id, shards[0])
    size = write_partial(store, key, merged)
    logger.info("merged shards %d..%d of %s: %d bytes", shards[0], shards[-1], run_id, size)
    return {"batch_key": key, "shards": len(shards), "partial_bytes": size}
