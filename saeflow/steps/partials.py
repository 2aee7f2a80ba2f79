"""Partial aggregates in the bucket: read, write, and the final merge of a run's partials.

Shared by the map/reduce steps (summarize_shard, merge_partials) and the aggregate step;
the layout is docs/ARCHITECTURE.md, "Scale out".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from saeflow.core import layout
from saeflow.core.aggregation.partial import PartialAggregate
from saeflow.core.errors import ExtractionFailed, ObjectNotFound
from saeflow.ports import ObjectStore

logger = logging.getLogger(__name__)

PARTIAL_CONTENT_TYPE = "application/gzip"


def read_partial(store: ObjectStore, key: str) -> PartialAggregate:
    """A stored partial; a missing or unreadable one is ExtractionFailed naming it."""
    try:
        data = store.get_bytes(key)
    except ObjectNotFound as exc:
        raise ExtractionFailed(f"partial aggregate {store.uri(key)} is missing") from exc
    try:
        return PartialAggregate.from_bytes(data)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ExtractionFailed(f"partial aggregate {store.uri(key)} is unreadable: {exc}") from exc


def write_partial(store: ObjectStore, key: str, partial: PartialAggregate) -> int:
    """Store ``partial``; returns its size in bytes."""
    data = partial.to_bytes()
    store.put_bytes(key, data, PARTIAL_CONTENT_TYPE)
    return len(data)


def merge_stored(store: ObjectStore, keys: list[str]) -> PartialAggregate:
    """The merge of the partials at ``keys``, read one at a time (memory: the running total
    plus one partial)."""
    total: PartialAggregate | None = None
    for key in keys:
        part = read_partial(store, key)
        if total is None:
            total = part
        else:
            total.merge(part)
    if total is None:
        raise ExtractionFailed("no partial aggregates to merge")
    return total


def run_partial_keys(store: ObjectStore, run_id: str, plan: Mapping[str, Any]) -> list[str]:
    """What the final merge reads: the batch merges when the run was batched, else the
    shard partials themselves (``plan`` is ``$.run.reduce``)."""
    if plan.get("batched"):
        prefix = layout.batch_partials_prefix(run_id)
        return sorted(k for k in store.list_keys(prefix) if k.endswith(".json.gz"))
    return [layout.shard_partial_key(run_id, i) for i in range(int(plan["n_shards"]))]


def merge_run_partials(
    store: ObjectStore, run_id: str, plan: Mapping[str, Any]
) -> PartialAggregate:
    """Every partial of the run merged, checked to cover each extraction shard once."""
    keys = run_partial_keys(store, run_id, plan)
    total = merge_stored(store, keys)
    total.check_covers(int(plan["n_shards"]))
    logger.info("merged %d partial aggregates of %s", len(keys), run_id)
    return total
