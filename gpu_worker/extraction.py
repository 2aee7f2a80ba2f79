"""Per-token top-k SAE features for a batch of prompts.

Speed comes from forward passes without waste: prompts are tokenised together, sorted by
length, and cut into batches that minimise padded tokens plus a fixed cost per forward
pass (:func:`plan_batches`; one pass costs about ``pass_cost_tokens`` tokens of compute:
little on a CPU, where compute is the bottleneck and padding is pure loss; a lot on a GPU,
where one more pass costs more than some padding), and each batch runs only up to the
hooked layer. Every content token
of the batch goes through the SAE encoder as one matrix. Padding is on the right, so
under causal attention a real token never sees a pad: results do not depend on how
prompts were batched.

Position 0 is always BOS (prepended here, whatever the tokenizer's habits) and is
never reported: the residual stream there is an attention sink with huge norms.
Special tokens inside a prompt are reported as tokens but carry no features.

Each prompt also carries the SAE's quality on it, as sums that add up across prompts
(:class:`PromptQuality`, always: the activations are there already) and, when asked
(``ce_loss``), the CE-loss sums of the splice (:class:`PromptCe`, three more forward passes
from the hook on, :mod:`gpu_worker.splice`), both over the prompt's content positions (not
BOS, not special tokens; the first real token included, as in training and evaluation).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gpu_worker.splice import SpliceRunner
from saeflow.core.contract.extraction import ACTIVATION_DECIMALS, compact_summary, compact_tokens
from saeflow.core.errors import PromptTooLong
from saeflow.core.hooks import HookPoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractionSettings:
    """How much to report and how to batch."""

    features_per_token: int = 8
    """Top features kept per token."""

    max_prompt_tokens: int = 512
    """Longest prompt accepted, in tokens (BOS not counted); longer -> PromptTooLong."""

    summary_features: int = 64
    """At most this many features in each prompt's summary (the strongest by max)."""

    max_batch_tokens: int = 8192
    """Padded tokens per forward pass (batch size x longest prompt in the batch)."""

    max_batch_prompts: int = 256
    """Prompts per forward pass, whatever their length."""

    pass_cost_tokens: int | None = None
    """What one extra forward pass costs, in padded tokens of compute; None: by device
    (64 on CPU, 4096 on CUDA)."""

    bf16_on_cuda: bool = True
    """Run under bf16 autocast on CUDA (fp32 elsewhere)."""

    ce_loss: bool = False
    """Also measure the CE loss of splicing the SAE in (three more passes from the hook on)."""

    def __post_init__(self) -> None:
        names = [
            "features_per_token",
            "max_prompt_tokens",
            "summary_features",
            "max_batch_tokens",
            "max_batch_prompts",
        ]
        if self.pass_cost_tokens is not None:  # None: chosen by device
            names.append("pass_cost_tokens")
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class FeatureSummary:
    """One feature over one prompt's content tokens (the tokens where it fires)."""

    id: int
    max: float
    mean: float
    count: int


@dataclass(frozen=True)
class PromptQuality:
    """Reconstruction sums over one prompt's content positions (they add up across prompts).

    With x the hook activation (fp32) and recon = sae.decode(sae.encode(x)): ``sq_err`` =
    sum ||x - recon||^2, ``sq_norm`` = sum ||x||^2, ``sum`` = sum of x. A set's explained
    variance is 1 - sum(sq_err) / (sum(sq_norm) - ||sum(sum)||^2 / sum(n)).
    """

    n: int
    sq_err: float
    sq_norm: float
    sum: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "sq_err": self.sq_err,
            "sq_norm": self.sq_norm,
            "sum": [round(v, ACTIVATION_DECIMALS) for v in self.sum],
        }


@dataclass(frozen=True)
class PromptCe:
    """Next-token CE-loss sums over the predictions made at a prompt's content positions
    whose next token is a token of the prompt: clean, SAE spliced in, zeros spliced in."""

    n: int
    clean: float
    spliced: float
    zero: float

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "clean": self.clean, "spliced": self.spliced, "zero": self.zero}


@dataclass(frozen=True)
class PromptFeatures:
    """What one prompt activates: per token the top features, and a per-feature summary."""

    token_ids: list[int]
    token_texts: list[str]
    features: list[list[tuple[int, float]]]
    summary: list[FeatureSummary]
    quality: PromptQuality | None = None
    ce: PromptCe | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def to_json(self) -> dict[str, Any]:
        """The output fields of an extraction record in the compact form
        (:mod:`saeflow.core.contract.extraction`; docs/ARCHITECTURE.md, serve)."""
        return {
            "n_tokens": self.n_tokens,
            **compact_tokens(self.token_texts, self.features),
            "summary": compact_summary([(s.id, s.max, s.mean, s.count) for s in self.summary]),
            "quality": None if self.quality is None else self.quality.to_json(),
            "ce": None if self.ce is None else self.ce.to_json(),
            "error": None,
        }


ExtractionResult = PromptFeatures | PromptTooLong


class FeatureExtractor:
    """Runs a HookedTransformer to the hooked layer and an SAE on its activations."""

    def __init__(
        self,
        model: Any,
        sae: Any,
        hook: HookPoint,
        settings: ExtractionSettings | None = None,
    ) -> None:
        hook.check_layers(model.cfg.n_layers)
        self.model = model
        self.sae = sae
        self.hook = hook
        self.settings = settings or ExtractionSettings()
        self.tokenizer = model.tokenizer
        bos = self.tokenizer.bos_token_id
        self.bos_id: int = bos if bos is not None else self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else self.bos_id
        self.special_ids = torch.tensor(
            sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long
        )
        # BOS takes one position of the context window.
        self.token_limit = min(self.settings.max_prompt_tokens, model.cfg.n_ctx - 1)
        self._token_text: dict[int, str] = {}

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.cfg.device)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without BOS (the exact count the limit applies to)."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(ids) for ids in encoded]

    def extract(self, texts: Sequence[str]) -> list[ExtractionResult]:
        """One result per text, same order: PromptFeatures, or PromptTooLong for that text."""
        token_ids = self.tokenize(texts)
        results: list[ExtractionResult | None] = [None] * len(texts)
        runnable: list[int] = []
        for index, ids in enumerate(token_ids):
            if len(ids) > self.token_limit:
                results[index] = PromptTooLong(
                    f"prompt has {len(ids)} tokens; the limit is {self.token_limit}"
                )
            elif not ids:
                results[index] = self._empty_result()
            else:
                runnable.append(index)
        # Longest first: each batch's padded length is its first prompt's length.
        runnable.sort(key=lambda i: (-len(token_ids[i]), i))
        lengths = [len(token_ids[i]) + 1 for i in runnable]  # + BOS
        for start, stop in plan_batches(
            lengths,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_batch_prompts=self.settings.max_batch_prompts,
            pass_cost_tokens=self.pass_cost_tokens,
        ):
            batch = runnable[start:stop]
            for index, result in zip(
                batch, self._run_batch([token_ids[i] for i in batch]), strict=True
            ):
                results[index] = result
        return [result for result in results if result is not None]

    def _empty_result(self) -> PromptFeatures:
        """An empty prompt: no tokens, and sums of nothing (so that merging still works)."""
        d_in = int(self.sae.W_enc.shape[0])
        return PromptFeatures(
            [],
            [],
            [],
            [],
            quality=PromptQuality(n=0, sq_err=0.0, sq_norm=0.0, sum=[0.0] * d_in),
            ce=PromptCe(0, 0.0, 0.0, 0.0) if self.settings.ce_loss else None,
        )

    @property
    def pass_cost_tokens(self) -> int:
        if self.settings.pass_cost_tokens is not None:
            return self.settings.pass_cost_tokens
        return 4096 if self.device.type == "cuda" else 64

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.settings.bf16_on_cuda and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def hook_activations(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The hooked activations ``(batch, pos, d)``; the forward pass stops after the hook."""
        captured: dict[str, torch.Tensor] = {}

        def capture(activation: torch.Tensor, hook: Any) -> torch.Tensor:
            captured["x"] = activation
            return activation

        self.model.run_with_hooks(
            tokens,
            attention_mask=attention_mask,
            stop_at_layer=self.hook.stop_at_layer,
            fwd_hooks=[(self.hook.name, capture)],
        )
        return captured["x"]

    def _run_batch(self, batch_ids: list[list[int]]) -> list[PromptFeatures]:
        tokens, attention_mask, content = self._pad(batch_ids)
        with torch.inference_mode(), self._autocast():
            out = self._forward(
                tokens.to(self.device), attention_mask.to(self.device), content.to(self.device)
            )
        results: list[PromptFeatures] = []
        cursor = 0  # rows of top_ids / top_values: the content positions, prompt by prompt
        for row, ids in enumerate(batch_ids):
            per_token: list[list[tuple[int, float]]] = []
            for position in range(1, len(ids) + 1):
                if not content[row, position]:
                    per_token.append([])
                    continue
                per_token.append(
                    [
                        (fid, value)
                        for fid, value in zip(
                            out.top_ids[cursor], out.top_values[cursor], strict=True
                        )
                        if value > 0
                    ]
                )
                cursor += 1
            results.append(
                PromptFeatures(
                    token_ids=ids,
                    token_texts=[self.token_text(token) for token in ids],
                    features=per_token,
                    summary=out.summaries[row],
                    quality=out.quality[row],
                    ce=None if out.ce is None else out.ce[row],
                )
            )
        return results

    def _pad(self, batch_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``[BOS] + ids`` right-padded, the attention mask, and the content positions
        (real tokens, not BOS, not special tokens)."""
        padded_len = max(len(ids) for ids in batch_ids) + 1
        tokens = torch.full((len(batch_ids), padded_len), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(tokens)
        for row, ids in enumerate(batch_ids):
            tokens[row, 0] = self.bos_id
            tokens[row, 1 : len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids) + 1] = 1
        content = attention_mask.bool() & ~torch.isin(tokens, self.special_ids)
        content[:, 0] = False
        return tokens, attention_mask, content

    def _forward(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, content: torch.Tensor
    ) -> _BatchOutput:
        """Model to the hook (or through, with the splice), SAE on every content position."""
        runner = None
        if self.settings.ce_loss:
            runner = SpliceRunner(self.model, self.hook, tokens, attention_mask)
            activations, clean_loss = runner.clean()
        else:
            activations = self.hook_activations(tokens, attention_mask)
        x = activations[content]  # (n_content, d)
        sae_param = self.sae.W_enc
        encoded = self.sae.encode(x.to(sae_param.device, sae_param.dtype))
        recon = self.sae.decode(encoded)
        feature_acts = encoded.float()
        k = min(self.settings.features_per_token, feature_acts.shape[-1])
        top_values, top_ids = feature_acts.topk(k, dim=-1)
        row_prompt = content.nonzero()[:, 0].to(feature_acts.device)
        n_prompts = int(tokens.shape[0])
        ce = None
        if runner is not None:
            # Predictions made at content positions whose next token is a real token (not a pad).
            predict = content[:, :-1] & attention_mask[:, 1:].bool()
            sums = runner.losses(clean_loss, content, recon).row_sums(predict).cpu().tolist()
            ce = [PromptCe(int(n), c, s, z) for n, c, s, z in zip(*sums, strict=True)]
        return _BatchOutput(
            top_ids=top_ids.cpu().tolist(),
            top_values=top_values.cpu().tolist(),
            summaries=self._summaries(feature_acts, row_prompt, n_prompts),
            quality=_quality(x, recon, row_prompt.to(x.device), n_prompts),
            ce=ce,
        )

    def _summaries(
        self, feature_acts: torch.Tensor, row_prompt: torch.Tensor, n_prompts: int
    ) -> list[list[FeatureSummary]]:
        """Per prompt: max, mean-when-firing and firing count of each feature that fires."""
        d_sae = feature_acts.shape[-1]
        firing = (feature_acts > 0).float()
        counts = torch.zeros(n_prompts, d_sae, device=feature_acts.device)
        counts.index_add_(0, row_prompt, firing)
        sums = torch.zeros_like(counts).index_add_(0, row_prompt, feature_acts.clamp(min=0))
        maxes = torch.zeros_like(counts).scatter_reduce_(
            0, row_prompt[:, None].expand_as(feature_acts), feature_acts, "amax"
        )
        keep = min(self.settings.summary_features, d_sae)
        # Strongest first; ties broken by feature id so the order is deterministic.
        top_max, top_ids = maxes.topk(keep, dim=-1, sorted=True)
        top_counts = counts.gather(1, top_ids)
        top_sums = sums.gather(1, top_ids)
        out: list[list[FeatureSummary]] = []
        for ids, mx, cnt, sm in zip(
            top_ids.cpu().tolist(),
            top_max.cpu().tolist(),
            top_counts.cpu().tolist(),
            top_sums.cpu().tolist(),
            strict=True,
        ):
            entries = [
                FeatureSummary(id=fid, max=m, mean=s / c, count=int(c))
                for fid, m, c, s in zip(ids, mx, cnt, sm, strict=True)
                if c > 0 and m > 0
            ]
            entries.sort(key=lambda e: (-e.max, e.id))
            out.append(entries)
        return out

    def token_text(self, token_id: int) -> str:
        """The text of one token (cached: the same tokens recur across prompts)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            self._token_text[token_id] = text
        return text


@dataclass
class _BatchOutput:
    """What one forward pass found, per content position (top_*) or per prompt."""

    top_ids: list[list[int]]
    top_values: list[list[float]]
    summaries: list[list[FeatureSummary]]
    quality: list[PromptQuality]
    ce: list[PromptCe] | None


def _quality(
    x: torch.Tensor, recon: torch.Tensor, row_prompt: torch.Tensor, n_prompts: int
) -> list[PromptQuality]:
    """Per prompt: the reconstruction sums over its content positions (float64)."""
    x = x.float()
    error = (x - recon.float().to(x.device)).pow(2).sum(dim=-1).double()
    counts = torch.bincount(row_prompt, minlength=n_prompts)
    sq_err = torch.zeros(n_prompts, dtype=torch.float64, device=x.device)
    sq_err.index_add_(0, row_prompt, error)
    sq_norm = torch.zeros_like(sq_err).index_add_(0, row_prompt, x.pow(2).sum(dim=-1).double())
    sums = torch.zeros(n_prompts, x.shape[-1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, row_prompt, x.double())
    return [
        PromptQuality(n=int(n), sq_err=e, sq_norm=q, sum=v)
        for n, e, q, v in zip(
            counts.tolist(), sq_err.tolist(), sq_norm.tolist(), sums.tolist(), strict=True
        )
    ]


def plan_batches(
    lengths: Sequence[int],
    *,
    max_batch_tokens: int,
    max_batch_prompts: int,
    pass_cost_tokens: int,
) -> list[tuple[int, int]]:
    """Cut ``lengths`` (sorted longest first) into ``[start, stop)`` batches of least cost.

    A batch costs ``pass_cost_tokens + size * lengths[start]`` (its padded tokens plus the
    fixed cost of a pass); the cuts minimise the total by dynamic programming over the
    sorted order, each batch within both limits (a prompt longer than the token limit runs
    alone). O(n * max_batch_prompts).
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[i]: least cost of the first i prompts
    cut = [0] * (n + 1)
    for stop in range(1, n + 1):
        for start in range(stop - 1, max(-1, stop - 1 - max_batch_prompts), -1):
            size = stop - start
            padded = size * lengths[start]
            if size > 1 and padded > max_batch_tokens:
                break  # longer prefixes only grow: lengths[start] rises as start falls
            cost = best[start] + pass_cost_tokens + padded
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    batches: list[tuple[int, int]] = []
    stop = n
    while stop > 0:
        batches.append((cut[stop], stop))
        stop = cut[stop]
    return batches[::-1]


def result_to_json(result: ExtractionResult) -> dict[str, Any]:
    """Output fields for a result: features, or the per-record error and no tokens."""
    if isinstance(result, PromptTooLong):
        return {
            "n_tokens": None,
            "tokens": [],
            "features": [],
            "summary": [],
            "error": result.to_dict(),
        }
    return result.to_json()
