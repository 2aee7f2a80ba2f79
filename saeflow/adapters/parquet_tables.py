"""Parquet encoding of saeflow's tables (pyarrow), for the Glue tables of template.yaml.

Only the per-shard function imports this (pyarrow travels in its own layer,
``ParquetLayer``); the pure core describes the columns (:mod:`saeflow.core.tables`).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any

# Glue column type -> pyarrow type name (the Parquet physical types Athena reads for them).
_TYPES = {"string": "string", "int": "int32", "tinyint": "int8", "float": "float32"}
ROW_GROUP_ROWS = 65_536
COMPRESSION = "zstd"


def encode_parquet(
    columns: Mapping[str, Any],
    schema: Sequence[tuple[str, str]],
    sort_by: Sequence[tuple[str, str]] = (),
) -> bytes:
    """One Parquet file (zstd, row groups of :data:`ROW_GROUP_ROWS`) of ``columns``, in
    ``schema``'s order and types, sorted by ``sort_by`` (``[(column, "ascending"|...)]``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [_array(pa, columns[name], getattr(pa, _TYPES[kind])()) for name, kind in schema]
    table = pa.Table.from_arrays(arrays, names=[name for name, _ in schema])
    if sort_by and table.num_rows:
        table = table.sort_by(list(sort_by))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)
    return bytes(sink.getvalue().to_pybytes())


def _array(pa: Any, values: Any, type_: Any) -> Any:
    if isinstance(values, array) and len(values):
        # Numbers straight from the array's buffer: no Python object per value.
        if values.itemsize != type_.bit_width // 8:
            raise ValueError(f"array of {values.itemsize}-byte items for {type_}")
        return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])
    return pa.array(list(values), type=type_)


def read_parquet_rows(data: bytes) -> list[dict[str, Any]]:
    """The rows of a Parquet file (tests and the bench check what was written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return list(pq.read_table(pa.BufferReader(data)).to_pylist())
