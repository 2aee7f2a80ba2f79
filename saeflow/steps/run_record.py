"""``runs/<id>/run.json``: the run's status as the steps see it.

validate writes it (``running``), write_report marks it ``succeeded``, record_failure marks
it ``failed``; each update keeps what earlier steps wrote.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from saeflow.core import layout
from saeflow.ports import ObjectStore


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def update_run_record(store: ObjectStore, run_id: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into run.json (created with just the run id when missing)."""
    key = layout.run_json_key(run_id)
    record = store.get_json(key) if store.exists(key) else {"run_id": run_id}
    record.update(fields)
    store.put_json(key, record)
    return record


def has_good_report(store: ObjectStore, run_id: str) -> bool:
    """True once write_report has written a succeeded report for the run."""
    key = layout.report_json_key(run_id)
    if not store.exists(key):
        return False
    try:
        report = store.get_json(key)
    except ValueError:
        return False
    return isinstance(report, dict) and report.get("status") == "succeeded"
