"""State that outlives one local run: the bucket's lasting prefixes and the registry tables.

moto keeps everything in memory; the state dir (default ``~/.cache/saeflow/local``) keeps
``s3/<bucket>/<key>`` files for the prefixes below and ``dynamodb/<table>.json`` dumps, so a
second run on the same model and hook finds its SAE under ``saes/`` and its labels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

# runs/ is scratch (the template's lifecycle rule expires it); prompts/ would re-trigger runs.
# tables/ holds each run's Parquet (the Glue tables on AWS): kept in the state dir for the
# user to query, but not loaded back into the stack (no later run reads it, and it grows).
PERSISTED_PREFIXES = ("saes/", "reports/", "labels/", "registry/", "tables/")
SAVED_ONLY_PREFIXES = ("tables/",)
# Objects written once: a copy of the same size in the state dir is not downloaded again.
WRITTEN_ONCE_PREFIXES = ("saes/", "tables/")
DEFAULT_STATE_DIR = Path.home() / ".cache" / "saeflow" / "local"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``SAEFLOW_STATE_DIR`` or the default; the CLI passes os.environ."""
    value = environ.get("SAEFLOW_STATE_DIR")
    return Path(value).expanduser() if value else DEFAULT_STATE_DIR


class PersistentState:
    """Mirror of the persisted part of the local stack in a folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def _s3_dir(self, bucket: str) -> Path:
        return self.state_dir / "s3" / bucket

    def _table_file(self, table: str) -> Path:
        return self.state_dir / "dynamodb" / f"{table}.json"

    def restore(self, s3: Any, dynamodb: Any, persisted: Mapping[str, Any]) -> int:
        """Load the folder into the (empty) stack; returns the number of objects and items."""
        bucket = persisted["bucket"]
        root = self._s3_dir(bucket)
        count = 0
        if root.exists():
            for path in sorted(root.rglob("*")):
                key = path.relative_to(root).as_posix()
                if key.startswith(SAVED_ONLY_PREFIXES):
                    continue
                if path.is_file() and not path.name.endswith(".saeflow-tmp"):
                    s3.upload_file(str(path), bucket, key)
                    count += 1
        for table in persisted["tables"]:
            items = _matching_key_schema(dynamodb, table, _read_items(self._table_file(table)))
            for start in range(0, len(items), 25):
                batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
                dynamodb.batch_write_item(RequestItems={table: batch})
            count += len(items)
        LOG.info("restored %d objects and items from %s", count, self.state_dir)
        return count

    def save(self, s3: Any, dynamodb: Any, persisted: Mapping[str, Any]) -> None:
        bucket = persisted["bucket"]
        root = self._s3_dir(bucket)
        for key, size in _list(s3, bucket, PERSISTED_PREFIXES):
            target = root / key
            written_once = key.startswith(WRITTEN_ONCE_PREFIXES)
            if written_once and target.exists() and target.stat().st_size == size:
                continue  # a registered SAE or a run's table; reports may be rewritten
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".saeflow-tmp")
            s3.download_file(bucket, key, str(partial))
            os.replace(partial, target)
        for table in persisted["tables"]:
            items = _scan(dynamodb, table)
            path = self._table_file(table)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".saeflow-tmp")
            partial.write_text(json.dumps(items))
            os.replace(partial, path)


def _list(s3: Any, bucket: str, prefixes: Iterable[str]) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    paginator = s3.get_paginator("list_objects_v2")
    for prefix in prefixes:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            found.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
    return found


def _scan(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        items.extend(page.get("Items", []))
    return items


def _matching_key_schema(dynamodb: Any, table: str, items: list[Any]) -> list[dict[str, Any]]:
    """The items the table can take: a state dir saved before the table's key changed
    (the label registry's did) keeps its old items on disk, unused, instead of failing."""
    described = dynamodb.describe_table(TableName=table)["Table"]
    keys = [k["AttributeName"] for k in described["KeySchema"]]
    kept = [i for i in items if isinstance(i, dict) and all(k in i for k in keys)]
    if len(kept) < len(items):
        LOG.warning(
            "%s: %d saved items have another key schema; not restored",
            table,
            len(items) - len(kept),
        )
    return kept


def _read_items(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        items = json.loads(path.read_text())
    except ValueError:
        LOG.warning("ignoring unreadable %s", path)
        return []
    return items if isinstance(items, list) else []
