"""Shared fixtures of the unit tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECORDS = Path(__file__).parent / "data" / "records_pets_cooking.jsonl"


@pytest.fixture
def real_records() -> list[dict]:
    """Real extraction output of the default model (layer-15 SAE, top 12 features per
    token kept): 14 prompts about pets (main set) and 14 about cooking (tagged contrast)."""
    records = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    for record in records:
        if record["id"].startswith("cooking"):
            record["set"] = "contrast"
    return records
