"""Pretrained SAEs end to end in the embedded mode, with the real model, offline.

The session's SAE (trained by saeflow in conftest's first run) is published two ways:
into a local Hugging Face cache under a test repo (``HF_HUB_OFFLINE=1``: what SAELens
loads ``saelens:<org>/<repo>/<sae_id>`` from without a network), and as an SAELens
directory in the bucket (``sae: s3://saeflow-local/saes/...``). Each gives a report without
training; an SAE that is not there is SaeNotFound, exit 2, before any job.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

HOOK = "blocks.15.hook_resid_post"
REPO = "saeflow-test/smollm2-saes"


def _hf_cache_module() -> Any:
    path = Path(__file__).parents[1] / "functional" / "fakes" / "hf_cache.py"
    spec = importlib.util.spec_from_file_location("saeflow_test_hf_cache", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trained_sae(state_dir: Path) -> Path:
    """The SAE the session's first run registered (persisted in the state dir)."""
    found = sorted(
        p.parent
        for p in (state_dir / "s3" / "saeflow-local" / "saes").rglob("metrics.json")
        if p.parent.parent.name == HOOK
    )
    assert found, "the first run registered no SAE"
    return found[0]


def _report(result: Any) -> dict[str, Any]:
    index = Path(result.stdout.strip().splitlines()[-1])
    assert index.name == "index.html", result.stdout + result.stderr
    return json.loads((index.parent / "report.json").read_text())


@pytest.fixture(scope="module")
def hf_cache(first_run: Any, state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert first_run.exit_code == 0, first_run.stderr
    cache = tmp_path_factory.mktemp("hf-cache")
    _hf_cache_module().add_sae_folder(cache, REPO, HOOK, _trained_sae(state_dir))
    return cache


def _run(cli: Any, examples: Path, out: Path, state_dir: Path, sae: str, hf_cache: Path) -> Any:
    return cli(
        "run",
        str(examples / "contrast.jsonl"),
        "--out",
        str(out),
        "--state-dir",
        str(state_dir),
        "--label",
        "offline",
        "--set",
        f"sae={sae}",
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache)},
    )


def test_a_saelens_sae_from_the_local_hugging_face_cache(
    cli: Any, examples: Path, tmp_path: Path, state_dir: Path, hf_cache: Path
) -> None:
    sae = f"saelens:{REPO}/{HOOK}"
    result = _run(cli, examples, tmp_path / "out", state_dir, sae, hf_cache)
    assert result.exit_code == 0, result.stderr
    assert "TrainSae" not in result.stderr and "Traceback" not in result.stderr
    report = _report(result)
    assert report["status"] == "succeeded" and report["sae"]["sae_id"] == sae
    assert any(token["features"] for token in report["prompts"][0]["tokens"])
    assert [f for f in report["features"] if f.get("label")]


def test_an_sae_directory_in_the_bucket(
    cli: Any, examples: Path, tmp_path: Path, state_dir: Path, hf_cache: Path
) -> None:
    # What `aws s3 cp --recursive my-sae/ s3://<bucket>/saes/imported/tiny/` leaves; the
    # local stack restores it from the state dir into the bucket.
    imported = state_dir / "s3" / "saeflow-local" / "saes" / "imported" / "tiny"
    shutil.copytree(_trained_sae(state_dir), imported, dirs_exist_ok=True)
    sae = "s3://saeflow-local/saes/imported/tiny/"
    result = _run(cli, examples, tmp_path / "out", state_dir, sae, hf_cache)
    assert result.exit_code == 0, result.stderr
    assert "TrainSae" not in result.stderr
    report = _report(result)
    assert report["sae"]["sae_id"] == "saes/imported/tiny"
    assert any(token["features"] for token in report["prompts"][0]["tokens"])


def test_a_pretrained_sae_that_is_not_there_is_sae_not_found_before_any_job(
    cli: Any, examples: Path, tmp_path: Path, hf_cache: Path
) -> None:
    state = tmp_path / "state"
    sae = f"saelens:{REPO}/blocks.3.hook_resid_post"
    result = _run(cli, examples, tmp_path / "out", state, sae, hf_cache)
    assert result.exit_code == 2, result.stderr
    assert "SaeNotFound" in result.stderr and "Traceback" not in result.stderr
    (error_file,) = (tmp_path / "out").glob("*/error.json")
    assert json.loads(error_file.read_text())["error"] == "SaeNotFound"
    assert not list(state.glob("jobs/*")), "no job may start"
