"""gpu_worker.models: the embedded default model (offline) and SAE loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from saeflow.core.contract import SaeReference
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


def test_saelens_refs_split_as_saelens_resolves_them() -> None:
    # A release of SAELens's registry: the id may hold slashes.
    assert parse_saelens_ref("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical") == (
        "gemma-scope-2b-pt-res-canonical",
        "layer_20/width_16k/canonical",
    )
    # Anything else: a Hugging Face repo id, then the SAE's folder in it.
    assert parse_saelens_ref("saeflow-test/tiny/blocks.15.hook_resid_post") == (
        "saeflow-test/tiny",
        "blocks.15.hook_resid_post",
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
    # What resolve_sae writes (saeflow.core.contract.SaeReference), read by the same type.
    reference = SaeReference(
        release="gpt2-small-res-jb", sae_id="nope", model="gpt2", hook="blocks.0.hook_resid_pre"
    )
    (ref_dir / "saeflow_sae.json").write_text(reference.model_dump_json())
    with pytest.raises(SaeNotFound, match="has no SAE 'nope'"):
        load_sae(ref_dir)


_OFFLINE_LOADS = """
import json, sys
from gpu_worker.models import load_sae
from saeflow.core.contract import SaeReference
from saeflow.core.errors import SaeNotFound
results = {}
for name, ref in json.loads(sys.argv[1]).items():
    try:
        sae = load_sae(ref)
        results[name] = {"d_sae": int(sae.cfg.d_sae), "hook": sae.cfg.metadata.hook_name}
    except SaeNotFound as exc:
        results[name] = {"error": str(exc)}
print(json.dumps(results))
"""


def test_pretrained_saes_load_offline_from_the_hugging_face_cache(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1: an SAE in a Hugging Face repo loads from the local cache, named
    directly or through a sae-ref directory; a registry SAE not cached is SaeNotFound, fast."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    hook = "blocks.15.hook_resid_post"
    metadata = SAEMetadata(model_name=DEFAULT_MODEL_ID, hook_name=hook)
    TopKSAE(TopKSAEConfig(d_in=576, d_sae=64, k=4, metadata=metadata)).save_model(tmp_path / "sae")
    hf_cache = _hf_cache_module()
    hf_cache.add_sae_folder(tmp_path / "hub", "saeflow-test/tiny", hook, tmp_path / "sae")
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    reference = SaeReference(release="saeflow-test/tiny", sae_id=hook, model="default", hook=hook)
    (ref_dir / "saeflow_sae.json").write_text(reference.model_dump_json())
    refs = {
        "direct": f"saelens:saeflow-test/tiny/{hook}",
        "sae-ref": str(ref_dir),
        "not cached": "saelens:gpt2-small-res-jb/blocks.0.hook_resid_pre",
        "missing folder": "saelens:saeflow-test/tiny/blocks.3.hook_resid_post",
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_LOADS, json.dumps(refs)],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["direct"] == results["sae-ref"] == {"d_sae": 64, "hook": hook}
    assert "local Hugging Face cache" in results["not cached"]["error"]
    assert "error" in results["missing folder"]
    assert time.perf_counter() - started < 120


def _hf_cache_module():
    import importlib.util

    path = Path(__file__).parents[1] / "functional" / "fakes" / "hf_cache.py"
    spec = importlib.util.spec_from_file_location("saeflow_test_hf_cache", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
