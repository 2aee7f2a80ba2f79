"""Workflow step "summarize_shard": one extraction shard -> its partial aggregate and tables.

A child of the ``SummarizeShards`` Distributed Map. Input (the Map's ItemSelector):
``{"shard": int, "run_id", "bucket", "sample_size": int}``. Streams
``runs/<id>/extract/shard-NNNNN.jsonl.out`` once and writes

- ``runs/<id>/partials/shard-NNNNN.json.gz`` (:class:`PartialAggregate`: the statistics,
  the report's prompt sample, the shard it covers, a per-record error if one occurred);
- ``tables/token_features/run_id=<id>/shard-NNNNN.parquet`` and
  ``tables/prompts/run_id=<id>/shard-NNNNN.parquet`` (the Glue tables).

A per-record error (``PromptTooLong``...) does not fail this step: it is kept in the
partial, and the aggregate step raises it under its own name once every shard is in
(a Distributed Map reports a failed child as ``States.ExceedToleratedFailureThreshold``,
which would hide the name). Anything else (a missing shard, S3 errors) fails the step.
Returns ``{"shard", "partial_key", "records", "token_rows", "partial_bytes", "error"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from saeflow.core import layout
from saeflow.core.aggregation.partial import DEFAULT_SAMPLE_SIZE, PartialAggregate, PromptSample
from saeflow.core.errors import ExtractionFailed, ObjectNotFound
from saeflow.core.tables import (
    PROMPT_COLUMNS,
    TOKEN_FEATURE_COLUMNS,
    TOKEN_FEATURES_SORT,
    ShardTables,
)
from saeflow.ports import ObjectStore, TableEncoder
from saeflow.steps.aggregate import iter_json_lines
from saeflow.steps.partials import write_partial

logger = logging.getLogger(__name__)

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


def _teed(records: Iterator[dict], tables: ShardTables) -> Iterator[dict]:
    """The records, each also added to the tables (one pass over the shard)."""
    for record in records:
        tables.add(record)
        yield record


def _shard_records(store: ObjectStore, key: str) -> Iterator[dict]:
    try:
        yield from iter_json_lines(store, key, ExtractionFailed)
    except ObjectNotFound as exc:
        raise ExtractionFailed(f"extraction output {store.uri(key)} is missing") from exc


def _write_tables(
    store: ObjectStore, encode: TableEncoder, run_id: str, shard: int, tables: ShardTables
) -> None:
    outputs = (
        (
            layout.TOKEN_FEATURES_TABLE,
            tables.token_features,
            TOKEN_FEATURE_COLUMNS,
            TOKEN_FEATURES_SORT,
        ),
        (layout.PROMPTS_TABLE, tables.prompts, PROMPT_COLUMNS, ()),
    )
    for table, columns, schema, sort_by in outputs:
        key = layout.table_shard_key(table, run_id, shard)
        store.put_bytes(key, encode(columns, schema, sort_by), PARQUET_CONTENT_TYPE)


def run(event: Mapping[str, Any], *, store: ObjectStore, encode: TableEncoder) -> dict[str, Any]:
    shard, run_id = int(event["shard"]), str(event["run_id"])
    partial = PartialAggregate(
        sample=PromptSample(int(event.get("sample_size") or DEFAULT_SAMPLE_SIZE))
    )
    tables = ShardTables()
    records = _teed(_shard_records(store, layout.extract_output_key(run_id, shard)), tables)
    partial.add_shard(shard, records)
    if partial.error is None:
        # A shard that failed part-way has no complete tables; the run fails anyway.
        _write_tables(store, encode, run_id, shard, tables)
    key = layout.shard_partial_key(run_id, shard)
    size = write_partial(store, key, partial)
    acc = partial.accumulator
    n_records = sum(acc.n_prompts.values())
    logger.info(
        "shard %d of %s: %d records, %d token rows, partial %d bytes%s",
        shard,
        run_id,
        n_records,
        tables.n_token_rows,
        size,
        f", error {partial.error['error']}" if partial.error else "",
    )
    return {
        "shard": shard,
        "partial_key": key,
        "records": n_records,
        "token_rows": tables.n_token_rows,
        "partial_bytes": size,
        "error": partial.error["error"] if partial.error else None,
    }
