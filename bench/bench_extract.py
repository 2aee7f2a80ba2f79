"""Extraction throughput: saeflow's batched extractor vs the seed notebook's approach.

The seed ran, per prompt, ``HookedSAETransformer.run_with_cache_with_saes(prompt,
saes=[sae], stop_at_layer=...)`` and read the top features per token from the cache.
Both sides here use the same model weights, the same SAE and the same prompts, and
produce per-token top-k feature ids and activations. In the same run the bench
measures a plain torch matmul (bf16 on CUDA, fp32 on CPU) as the machine's practical
peak, and reports the fraction of it the extractor's LM + SAE matmuls reach.

``run(...) -> dict`` is called by the bench runner; ``python -m bench.bench_extract``
prints the dict as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gpu_worker.extraction import ExtractionSettings, FeatureExtractor, PromptFeatures
from saeflow.core.hooks import HookPoint

logger = logging.getLogger(__name__)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
DEFAULT_HOOK = "blocks.15.hook_resid_post"


def bench_prompts(n_prompts: int, *, min_chars: int = 40, max_chars: int = 400) -> list[str]:
    """Deterministic, varied English prompts: fortune cookies (the offline corpus's source)."""
    prompts: list[str] = []
    for path in sorted(FORTUNES_DIR.glob("*")):
        if path.suffix or not path.is_file() or path.name == "ascii-art":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            entry = " ".join(entry.split())
            if min_chars <= len(entry) <= max_chars:
                prompts.append(entry)
                if len(prompts) == n_prompts:
                    return prompts
    if not prompts:
        raise RuntimeError(f"no prompts found under {FORTUNES_DIR} (apt-get install fortunes)")
    return prompts


def random_topk_sae(d_in: int, hook: HookPoint, *, expansion: int = 8, k: int = 32) -> Any:
    """An SAE of the default shape (8x width, TopK k=32); speed does not depend on training."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    generator = torch.Generator().manual_seed(0)
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=d_in, d_sae=d_in * expansion, k=k, metadata=SAEMetadata(hook_name=hook.name)
        )
    )
    with torch.no_grad():
        w = torch.randn(d_in, d_in * expansion, generator=generator) / d_in**0.5
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w.T)
    return sae


def matmul_gflops(device: torch.device, *, seconds: float = 2.0) -> tuple[float, str]:
    """Sustained square-matmul GFLOP/s: bf16 on CUDA, fp32 on CPU."""
    if device.type == "cuda":
        dtype, n = torch.bfloat16, 8192
    else:
        dtype, n = torch.float32, 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10:
            continue
        _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - started
    return 2 * n**3 * reps / elapsed / 1e9, str(dtype).removeprefix("torch.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_token(model: Any, sae: Any, hook: HookPoint, mean_len: float) -> float:
    """Matmul FLOPs per token: the blocks run up to the hook, attention scores, SAE encoder."""
    block_params = sum(
        p.numel()
        for block in model.blocks[: hook.stop_at_layer]
        for p in block.parameters()
        if p.dim() >= 2
    )
    # QK^T and AV: 2 matmuls of pos x d_head per head per layer, causal (half) on average.
    attention = 2 * 2 * model.cfg.n_heads * model.cfg.d_head * (mean_len / 2) * hook.stop_at_layer
    sae_encode = 2 * sae.W_enc.shape[0] * sae.W_enc.shape[1]
    return 2 * block_params + attention + sae_encode


def seed_style_extract(
    model: Any, sae: Any, hook: HookPoint, prompts: Sequence[str], k: int
) -> list[list[list[int]]]:
    """The seed notebook's way: one prompt at a time, SAE attached, full cache."""
    out = []
    for prompt in prompts:
        with torch.inference_mode():
            _, cache = model.run_with_cache_with_saes(
                prompt, saes=[sae], stop_at_layer=hook.stop_at_layer
            )
            acts = cache[f"{hook.name}.hook_sae_acts_post"][0, 1:]
            _, ids = acts.topk(k, dim=-1)
        out.append(ids.cpu().tolist())
    return out


def _hooked_sae_transformer(model: Any) -> Any:
    from sae_lens import HookedSAETransformer

    twin = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer, move_to_device=False)
    twin.load_state_dict(model.state_dict(), strict=False)
    twin.to(model.cfg.device)
    twin.eval()
    return twin


def _timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    _sync(device)
    started = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - started


def run(
    *,
    model: Any | None = None,
    sae: Any | None = None,
    hook: str = DEFAULT_HOOK,
    cache_dir: Path | None = None,
    device: str = "auto",
    n_prompts: int = 48,
    n_baseline_prompts: int | None = None,
    features_per_token: int = 8,
) -> dict[str, Any]:
    """Measure and return the ``extract`` figures of bench/results.json (plus details)."""
    from gpu_worker.models import load_language_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    hook_point = HookPoint.parse(hook)
    if model is None:
        # The bench is an entry point: like the worker's CLI it honours SAEFLOW_CACHE_DIR.
        default_cache = os.environ.get("SAEFLOW_CACHE_DIR") or Path.home() / ".cache" / "saeflow"
        model = load_language_model(
            "default", cache_dir=Path(cache_dir or default_cache), device=device
        )
    sae_source = "given"
    if sae is None:
        sae = random_topk_sae(model.cfg.d_model, hook_point).to(device)
        sae_source = "random TopK (8x width, k=32)"
    prompts = bench_prompts(n_prompts)
    baseline_prompts = prompts[: n_baseline_prompts or len(prompts)]
    settings = ExtractionSettings(features_per_token=features_per_token)
    extractor = FeatureExtractor(model, sae, hook_point, settings)

    twin = _hooked_sae_transformer(model)
    extractor.extract(prompts[:8])  # warm-up (allocator, kernels, token cache)
    seed_style_extract(twin, sae, hook_point, baseline_prompts[:2], features_per_token)
    # Ours before and after the baseline, averaged: on a shared machine the load changes
    # during the run, and bracketing keeps the ratio fair.
    results, before = _timed(lambda: extractor.extract(prompts), torch_device)
    baseline, base_seconds = _timed(
        lambda: seed_style_extract(twin, sae, hook_point, baseline_prompts, features_per_token),
        torch_device,
    )
    _, after = _timed(lambda: extractor.extract(prompts), torch_device)
    seconds = (before + after) / 2
    n_tokens = sum(r.n_tokens for r in results if isinstance(r, PromptFeatures))
    tokens_per_s = n_tokens / seconds
    base_tokens = sum(len(ids) for ids in baseline)
    baseline_tokens_per_s = base_tokens / base_seconds

    # Same answer? Top-1 feature per (non-special) token vs the seed's fp32 path.
    agree = total = 0
    for ours, theirs in zip(results, baseline, strict=False):
        if not isinstance(ours, PromptFeatures):
            continue
        for token_feats, their_ids in zip(ours.features, theirs, strict=True):
            if token_feats:
                total += 1
                agree += token_feats[0][0] == their_ids[0]
    top1_agreement = agree / total if total else None

    gflops, matmul_dtype = matmul_gflops(torch_device)
    mean_len = n_tokens / max(1, len(results))
    achieved = tokens_per_s * flops_per_token(model, sae, hook_point, mean_len) / 1e9
    reduced = torch_device.type == "cuda" and settings.bf16_on_cuda
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "baseline_tokens_per_s": round(baseline_tokens_per_s, 1),
        "ratio": round(tokens_per_s / baseline_tokens_per_s, 2),
        "matmul_gflops": round(gflops, 1),
        "achieved_gflops": round(achieved, 1),
        "fraction_of_peak": round(achieved / gflops, 3),
        "top1_agreement": None if top1_agreement is None else round(top1_agreement, 4),
        "top1_agreement_vs": "seed-style fp32 path" if not reduced else "fp32 (seed-style path)",
        "dtype": "bfloat16 autocast" if reduced else "float32",
        "matmul_dtype": matmul_dtype,
        "device": torch.cuda.get_device_name(torch_device)
        if torch_device.type == "cuda"
        else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "extract_seconds": [round(before, 2), round(after, 2)],
        "baseline_seconds": round(base_seconds, 2),
        "n_prompts": len(prompts),
        "n_tokens": n_tokens,
        "n_baseline_prompts": len(baseline_prompts),
        "hook": hook_point.name,
        "d_sae": int(sae.W_enc.shape[1]),
        "sae": sae_source,
        "features_per_token": features_per_token,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    print(json.dumps(run(), indent=2))
