"""The data users query: one run's extraction output as two tables (Parquet, Glue, Athena).

- ``token_features``: one row per (prompt, token, feature) among each token's top features:
  ``set``, ``prompt_index``, ``prompt_id``, ``token_index`` (0 = the prompt's first real
  token; BOS is never a row), ``token``, ``feature``, ``activation``, ``rank`` (0 = the
  strongest feature at that token).
- ``prompts``: one row per prompt: ``set``, ``prompt_index``, ``prompt_id``, ``n_tokens``,
  ``text``.

Both are partitioned by ``run_id`` (a path segment, not a column of the files: see
:func:`saeflow.core.layout.table_shard_key`). The column names and types here are the
ones template.yaml declares for the Glue tables (a test compares them). Column types are
named as Glue names them; the Parquet encoder (an adapter) maps them.

Columns are collected in compact containers (``array`` for numbers) so a shard of a
thousand 64-token prompts (about half a million rows) stays a few tens of MB.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from saeflow.core.contract.extraction import record_tokens

# (column, Glue type); "int" is 32-bit, "tinyint" 8-bit, "float" 32-bit.
TOKEN_FEATURE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("set", "string"),
    ("prompt_index", "int"),
    ("prompt_id", "string"),
    ("token_index", "int"),
    ("token", "string"),
    ("feature", "int"),
    ("activation", "float"),
    ("rank", "tinyint"),
)
PROMPT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("set", "string"),
    ("prompt_index", "int"),
    ("prompt_id", "string"),
    ("n_tokens", "int"),
    ("text", "string"),
)
PARTITION_COLUMN = ("run_id", "string")
# Token rows are written sorted so that a query for one feature reads few row groups.
TOKEN_FEATURES_SORT = (("feature", "ascending"), ("activation", "descending"))
_ARRAY_CODES = {"int": "i", "tinyint": "b", "float": "f"}
_RANK_MAX = 127  # tinyint


def _columns(schema: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {
        name: array(_ARRAY_CODES[kind]) if kind in _ARRAY_CODES else [] for name, kind in schema
    }


@dataclass
class ShardTables:
    """The two tables' rows of one shard, filled record by record."""

    token_features: dict[str, Any] = field(default_factory=lambda: _columns(TOKEN_FEATURE_COLUMNS))
    prompts: dict[str, Any] = field(default_factory=lambda: _columns(PROMPT_COLUMNS))

    def add(self, record: Mapping[str, Any]) -> None:
        """One extraction record (either form); error records add a prompt row only."""
        set_name = str(record.get("set") or "main")
        index = record.get("prompt_index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else -1
        prompt_id = str(record.get("id", index))
        texts, features = record_tokens(record) if not record.get("error") else ([], [])
        rows = self.token_features
        for position, (text, per_token) in enumerate(zip(texts, features, strict=True)):
            for rank, (feature_id, activation) in enumerate(per_token[: _RANK_MAX + 1]):
                rows["set"].append(set_name)
                rows["prompt_index"].append(index)
                rows["prompt_id"].append(prompt_id)
                rows["token_index"].append(position)
                rows["token"].append(text)
                rows["feature"].append(feature_id)
                rows["activation"].append(activation)
                rows["rank"].append(rank)
        prompts = self.prompts
        prompts["set"].append(set_name)
        prompts["prompt_index"].append(index)
        prompts["prompt_id"].append(prompt_id)
        prompts["n_tokens"].append(len(texts))
        prompts["text"].append(str(record.get("text") or "".join(texts)))

    @property
    def n_token_rows(self) -> int:
        return len(self.token_features["feature"])
