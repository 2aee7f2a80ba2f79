"""gpu_worker.models: the embedded default model (offline) and SAE loading."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from gpu_worker.models import (
    DEFAULT_MODEL_ID,
    canonical_model_id,
    embedded_model_dir,
    find_embedded_gguf,
    is_embedded_model,
    load_language_model,
    load_sae,
    parse_saelens_ref,
)
from saeflow.core.errors import SaeNotFound


def test_default_alias_resolves_to_the_embedded_model() -> None:
    assert canonical_model_id("default") == DEFAULT_MODEL_ID
    assert is_embedded_model("default") and is_embedded_model(DEFAULT_MODEL_ID)
    assert not is_embedded_model("gpt2")
    assert canonical_model_id("Qwen/Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"


def test_cache_path_avoids_transformerlens_name_branches(tmp_path: Path) -> None:
    # A "llama" path would send TransformerLens down a name-based config branch.
    assert "llama" not in str(embedded_model_dir(tmp_path)).lower()


def test_embedded_gguf_is_found_in_the_wheel() -> None:
    path = find_embedded_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_saelens_refs_split_at_the_first_slash() -> None:
    assert parse_saelens_ref("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical") == (
        "gemma-scope-2b-pt-res-canonical",
        "layer_20/width_16k/canonical",
    )
    with pytest.raises(SaeNotFound):
        parse_saelens_ref("no-id")


def test_load_sae_rejects_what_is_not_an_sae(tmp_path: Path) -> None:
    with pytest.raises(SaeNotFound, match="does not exist"):
        load_sae(tmp_path / "missing")
    with pytest.raises(SaeNotFound, match="not an SAE directory"):
        load_sae(tmp_path)
    (tmp_path / "saeflow_sae.json").write_text("{not json")
    with pytest.raises(SaeNotFound, match="not valid JSON"):
        load_sae(tmp_path)


def test_unknown_saelens_release_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SaeNotFound, match="no release 'no-such-release'"):
        load_sae("saelens:no-such-release/x")
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "saeflow_sae.json").write_text(json.dumps({"saelens": "gpt2-small-res-jb/nope"}))
    with pytest.raises(SaeNotFound, match="has no SAE 'nope'"):
        load_sae(ref_dir)


def test_registry_sae_offline_fails_fast_with_sae_not_found(monkeypatch) -> None:
    # No hub here (or HF_HUB_OFFLINE): a named error within seconds, not a traceback or a hang.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(SaeNotFound, match="need the Hugging Face hub"):
        load_sae("saelens:gpt2-small-res-jb/blocks.0.hook_resid_pre")
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_default_model_is_coherent_fp32_eval_on_cpu(default_model) -> None:
    assert not default_model.training
    assert default_model.cfg.dtype == torch.float32
    assert default_model.cfg.n_layers == 30 and default_model.cfg.d_model == 576
    assert all(p.dtype == torch.float32 for p in default_model.parameters())
    text = default_model.generate(
        "The capital of France is", max_new_tokens=4, do_sample=False, verbose=False
    )
    assert "Paris" in text


@pytest.mark.slow
def test_second_load_is_a_cache_hit(default_model, worker_cache_dir: Path) -> None:
    marker = embedded_model_dir(worker_cache_dir) / "saeflow_model.json"
    converted_at = marker.stat().st_mtime
    started = time.perf_counter()
    again = load_language_model("default", cache_dir=worker_cache_dir)
    elapsed = time.perf_counter() - started
    assert marker.stat().st_mtime == converted_at  # no second conversion
    tokens = default_model.to_tokens("Hello there")
    with torch.inference_mode():
        assert torch.equal(again(tokens), default_model(tokens))
    # Cached loads take ~2-5 s on an idle 2-core box; the bound leaves room for a busy one.
    assert elapsed < 60


@pytest.mark.slow
def test_trained_sae_dir_loads_with_load_sae(small_sae_dir: Path) -> None:
    sae = load_sae(small_sae_dir)
    assert sae.cfg.d_in == 576 and sae.cfg.d_sae == 1152
    assert sae.cfg.metadata.hook_name == "blocks.15.hook_resid_post"
