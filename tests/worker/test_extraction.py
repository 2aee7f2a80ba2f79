"""Feature extraction on the real default model with a real SAELens SAE."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gpu_worker.extraction import (
    ExtractionSettings,
    FeatureExtractor,
    PromptFeatures,
    result_to_json,
)
from gpu_worker.models import load_sae
from saeflow.core.errors import InvalidHook, PromptTooLong
from saeflow.core.hooks import HookPoint

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is Paris.",
    "Hi",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>",
    "",
    "Sailing boats raced across the bay while the wind picked up and the crowd cheered.",
    "def add(a, b):\n    return a + b",
    "Would you be able to travel through time using a wormhole?",
]


@pytest.fixture(scope="module")
def sae(small_sae_dir: Any) -> Any:
    return load_sae(small_sae_dir, device="cpu")


@pytest.fixture(scope="module")
def hook(sae: Any) -> HookPoint:
    return HookPoint.parse(sae.cfg.metadata.hook_name)


def extractor(model: Any, sae: Any, hook: HookPoint, **settings: Any) -> FeatureExtractor:
    return FeatureExtractor(model, sae, hook, ExtractionSettings(**settings))


def feature_ids(result: Any) -> list[list[int]]:
    return [[fid for fid, _ in token] for token in result.features]


def test_tokens_features_and_summary(default_model: Any, sae: Any, hook: HookPoint) -> None:
    results = extractor(default_model, sae, hook, features_per_token=5).extract(PROMPTS)
    assert len(results) == len(PROMPTS)
    assert all(isinstance(r, PromptFeatures) for r in results)
    first = results[0]
    # BOS is not in the output; the tokens spell the prompt exactly.
    assert "".join(first.token_texts) == PROMPTS[0]
    assert (
        first.token_ids
        == default_model.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    )
    for token in first.features:
        assert 1 <= len(token) <= 5
        activations = [act for _, act in token]
        assert activations == sorted(activations, reverse=True) and activations[-1] > 0
    # The summary agrees with the SAE applied to the hooked activations directly.
    _, cache = default_model.run_with_cache(
        PROMPTS[0], names_filter=hook.name, stop_at_layer=hook.stop_at_layer
    )
    with torch.no_grad():
        direct = sae.encode(cache[hook.name][0, 1:])  # drop BOS
    best = first.summary[0]
    assert best.max == pytest.approx(direct[:, best.id].max().item(), rel=1e-4)
    assert best.count == int((direct[:, best.id] > 0).sum())
    assert best.mean == pytest.approx(direct[:, best.id].sum().item() / best.count, rel=1e-4)
    assert [s.max for s in first.summary] == sorted((s.max for s in first.summary), reverse=True)
    top_token_feature = int(direct[0].argmax())
    assert feature_ids(first)[0][0] == top_token_feature

    # Special tokens are reported but carry no features; the empty prompt has no tokens.
    chat = results[2]
    special = set(default_model.tokenizer.all_special_ids)
    assert any(t in special for t in chat.token_ids)
    for token_id, feats in zip(chat.token_ids, chat.features, strict=True):
        assert (feats == []) == (token_id in special)
    assert results[3].n_tokens == 0 and results[3].summary == []

    record = result_to_json(first)
    assert record["error"] is None and record["n_tokens"] == first.n_tokens
    # The compact form (saeflow.core.contract.extraction): texts, [[id, activation]] per token.
    assert record["tokens"] == [first.token_texts[i] for i in range(first.n_tokens)]
    assert len(record["features"]) == first.n_tokens
    fid, activation = record["features"][1][0]
    assert (fid, activation) == (first.features[1][0][0], round(first.features[1][0][1], 4))
    assert record["summary"][0] == [
        first.summary[0].id,
        round(first.summary[0].max, 4),
        round(first.summary[0].mean, 4),
        first.summary[0].count,
    ]


def test_deterministic_and_batch_size_invariant(
    default_model: Any, sae: Any, hook: HookPoint
) -> None:
    one_batch = extractor(default_model, sae, hook, max_batch_tokens=100_000).extract(PROMPTS)
    again = extractor(default_model, sae, hook, max_batch_tokens=100_000).extract(PROMPTS)
    one_by_one = extractor(default_model, sae, hook, max_batch_tokens=1).extract(PROMPTS)
    pairs = extractor(default_model, sae, hook, max_batch_prompts=2).extract(PROMPTS)
    assert [result_to_json(r) for r in one_batch] == [result_to_json(r) for r in again]
    for other in (one_by_one, pairs):
        for a, b in zip(one_batch, other, strict=True):
            assert a.token_ids == b.token_ids
            assert feature_ids(a) == feature_ids(b)
            for ta, tb in zip(a.features, b.features, strict=True):
                for (_, xa), (_, xb) in zip(ta, tb, strict=True):
                    assert xa == pytest.approx(xb, abs=1e-3, rel=1e-4)
            assert [s.id for s in a.summary] == [s.id for s in b.summary]


def test_token_limit_is_exact(default_model: Any, sae: Any, hook: HookPoint) -> None:
    text = " cat" * 20
    n_tokens = len(default_model.tokenizer(text, add_special_tokens=False)["input_ids"])
    at_limit = extractor(default_model, sae, hook, max_prompt_tokens=n_tokens).extract([text])[0]
    over = extractor(default_model, sae, hook, max_prompt_tokens=n_tokens - 1).extract(
        [text, "short"]
    )
    assert isinstance(at_limit, PromptFeatures) and at_limit.n_tokens == n_tokens
    assert isinstance(over[0], PromptTooLong)
    assert f"{n_tokens} tokens" in over[0].message
    assert isinstance(over[1], PromptFeatures)  # one long prompt fails only itself
    record = result_to_json(over[0])
    assert record["error"]["error"] == "PromptTooLong" and record["tokens"] == []


def content_activations(model: Any, hook: HookPoint, prompt: str) -> tuple[Any, list[int]]:
    """BOS + the prompt's tokens, and the content positions (not BOS, not special tokens)."""
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([[model.tokenizer.bos_token_id, *ids]])
    special = set(model.tokenizer.all_special_ids)
    return tokens, [i + 1 for i, token in enumerate(ids) if token not in special]


def explained_variance(records: list[dict[str, Any]]) -> float:
    """A set's explained variance from the records' quality sums (the aggregator's formula)."""
    qualities = [r["quality"] for r in records]
    n = sum(q["n"] for q in qualities)
    total = torch.tensor([q["sum"] for q in qualities], dtype=torch.float64).sum(dim=0)
    variance = sum(q["sq_norm"] for q in qualities) - float(total.pow(2).sum()) / n
    return 1.0 - sum(q["sq_err"] for q in qualities) / variance


def test_quality_sums_match_the_sae_on_the_hook_activations(
    default_model: Any, sae: Any, hook: HookPoint
) -> None:
    ext = extractor(default_model, sae, hook)
    records = [result_to_json(r) for r in ext.extract(PROMPTS)]
    all_x = []
    for prompt, record in zip(PROMPTS, records, strict=True):
        assert record["ce"] is None  # not asked for
        tokens, content = content_activations(default_model, hook, prompt)
        _, cache = default_model.run_with_cache(
            tokens, names_filter=hook.name, stop_at_layer=hook.stop_at_layer
        )
        x = cache[hook.name][0, content].float()
        all_x.append(x)
        quality = record["quality"]
        assert quality["n"] == len(content) and len(quality["sum"]) == sae.cfg.d_in
        if not content:
            assert quality["sq_err"] == quality["sq_norm"] == 0 and not any(quality["sum"])
            continue
        with torch.no_grad():
            recon = sae.decode(sae.encode(x))
        assert quality["sq_norm"] == pytest.approx(float(x.pow(2).sum()), rel=1e-5)
        assert quality["sq_err"] == pytest.approx(float((x - recon).pow(2).sum()), rel=1e-4)
        assert quality["sum"] == pytest.approx(x.sum(dim=0).tolist(), abs=1e-3)

    # The set's EV from records merged over two extractions = from one = computed directly.
    halves = [result_to_json(r) for r in ext.extract(PROMPTS[:3]) + ext.extract(PROMPTS[3:])]
    x = torch.cat(all_x).double()
    with torch.no_grad():
        recon = sae.decode(sae.encode(x.float())).double()
    direct = 1 - float((x - recon).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum())
    # (not bit-equal: other batches, other fp32 rounding in the model)
    assert explained_variance(halves) == pytest.approx(explained_variance(records), abs=1e-6)
    assert explained_variance(records) == pytest.approx(direct, abs=1e-5)


def direct_ce(model: Any, sae: Any, hook: HookPoint, prompt: str) -> dict[str, float]:
    """The three CE sums of one prompt, computed with plain hooks on the unpadded prompt."""
    tokens, content = content_activations(model, hook, prompt)
    predict = [p for p in content if p + 1 < tokens.shape[1]]

    def loss_with(replace: str | None) -> float:
        def hook_fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if replace is None:
                return act
            act = act.clone()
            x = act[0, content]
            act[0, content] = sae.decode(sae.encode(x)) if replace == "sae" else 0 * x
            return act

        with torch.no_grad():
            loss = model.run_with_hooks(
                tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook.name, hook_fn)]
            )
        return float(loss[0, predict].sum())

    return {
        "n": len(predict),
        "clean": loss_with(None),
        "spliced": loss_with("sae"),
        "zero": loss_with("zero"),
    }


def test_ce_sums_match_plain_hooks_and_do_not_depend_on_batching(
    default_model: Any, sae: Any, hook: HookPoint
) -> None:
    batched = extractor(default_model, sae, hook, ce_loss=True, max_batch_tokens=100_000)
    one_by_one = extractor(default_model, sae, hook, ce_loss=True, max_batch_tokens=1)
    plain = extractor(default_model, sae, hook, max_batch_tokens=100_000)
    results = batched.extract(PROMPTS)
    alone = one_by_one.extract(PROMPTS)
    without = plain.extract(PROMPTS)
    for prompt, a, b, c in zip(PROMPTS, results, alone, without, strict=True):
        ce = result_to_json(a)["ce"]
        assert ce == pytest.approx(result_to_json(b)["ce"], rel=1e-4, abs=1e-6)
        assert ce == pytest.approx(direct_ce(default_model, sae, hook, prompt), rel=1e-4, abs=1e-5)
        assert result_to_json(c)["ce"] is None
        assert feature_ids(a) == feature_ids(c)  # the splice leaves the features alone
    long_one = result_to_json(results[4])["ce"]
    assert long_one["n"] > 10 and long_one["clean"] < long_one["spliced"] < long_one["zero"]
    assert result_to_json(results[1])["ce"]["n"] == 0  # one token: nothing to predict


def test_hook_outside_the_model_is_refused(default_model: Any, sae: Any) -> None:
    with pytest.raises(InvalidHook, match="30 layers"):
        FeatureExtractor(default_model, sae, HookPoint(30, "resid_post"))


@pytest.mark.gpu
def test_gpu_bf16_matches_fp32_top_feature(default_model: Any, small_sae_dir: Any) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import copy

    model = copy.deepcopy(default_model).to("cuda")
    model.cfg.device = "cuda"
    gpu_sae = load_sae(small_sae_dir, device="cuda")
    hook = HookPoint.parse(gpu_sae.cfg.metadata.hook_name)
    bf16 = FeatureExtractor(model, gpu_sae, hook, ExtractionSettings()).extract(PROMPTS)
    fp32 = FeatureExtractor(model, gpu_sae, hook, ExtractionSettings(bf16_on_cuda=False)).extract(
        PROMPTS
    )
    tokens = agree = 0
    for a, b in zip(bf16, fp32, strict=True):
        for ta, tb in zip(a.features, b.features, strict=True):
            if ta and tb:
                tokens += 1
                agree += ta[0][0] == tb[0][0]
    assert tokens and agree / tokens >= 0.9


def test_batch_plan_trades_padding_against_passes() -> None:
    from gpu_worker.extraction import plan_batches

    lengths = [100, 90, 50, 40, 30, 30, 20, 10, 5]
    limits = {"max_batch_tokens": 8192, "max_batch_prompts": 256}
    # Cheap passes (CPU): no prompt is padded to twice its length or more.
    cheap = plan_batches(lengths, pass_cost_tokens=64, **limits)
    assert cheap == [(0, 2), (2, 4), (4, 9)]
    # Costly passes (GPU): one pass for all.
    assert plan_batches(lengths, pass_cost_tokens=4096, **limits) == [(0, 9)]
    # The limits always hold, and every prompt is in exactly one batch, in order.
    tight = plan_batches(
        lengths, pass_cost_tokens=10_000, max_batch_tokens=120, max_batch_prompts=3
    )
    assert [i for a, b in tight for i in range(a, b)] == list(range(len(lengths)))
    for start, stop in tight:
        assert stop - start <= 3 and (stop - start == 1 or (stop - start) * lengths[start] <= 120)
    assert plan_batches([], pass_cost_tokens=64, **limits) == []
