"""The loaded model + SAE behind ``serve`` and the local ``extract`` / ``steer`` commands.

Turns parsed records into output objects (docs/ARCHITECTURE.md, "serve") with a
:class:`FeatureExtractor` and a :class:`Steerer` sharing one model and one SAE.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_worker.extraction import ExtractionSettings, FeatureExtractor, result_to_json
from gpu_worker.records import ExtractionRecord, SteerRecord
from gpu_worker.steering import SamplingSettings, Steer, Steerer
from saeflow.core.contract import DEFAULT_HOOK, DEFAULT_MODEL, SAE_DESCRIPTOR_FILE
from saeflow.core.errors import InvalidHook, SaeflowError
from saeflow.core.hooks import HookPoint

logger = logging.getLogger(__name__)

# Rows of one steering batch at most (each holds its own KV cache).
_MAX_STEER_ROWS = 16


@dataclass(frozen=True)
class WorkerSettings:
    """What to load and how to extract. ``None`` model/hook: from the SAE directory."""

    sae_ref: str
    model: str | None = None
    hook: str | None = None
    features_per_token: int = 8
    max_prompt_tokens: int = 512
    device: str = "cpu"
    cache_dir: Path = Path.home() / ".cache" / "saeflow"
    hf_token: str | None = None
    ce_loss: bool = False
    """Extraction records also carry the CE-loss sums of the splice (``"ce"``)."""
    max_batch_tokens: int | None = None
    """Padded tokens per forward pass (``SAEFLOW_MAX_BATCH_TOKENS``, sized from the transform's
    instance type by validate); None: the extractor's default."""


def describe_sae_dir(path: Path) -> dict[str, Any]:
    """``saeflow_sae.json`` of an SAE or sae-ref directory ({} when absent or unreadable)."""
    ref_file = Path(path) / SAE_DESCRIPTOR_FILE
    if not ref_file.is_file():
        return {}
    try:
        data = json.loads(ref_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", ref_file, exc)
        return {}
    return data if isinstance(data, dict) else {}


def resolve_model_and_hook(
    settings: WorkerSettings, sae_metadata: Any | None = None
) -> tuple[str, HookPoint]:
    """Explicit setting > the SAE directory's saeflow_sae.json > the SAE's own cfg > default."""
    described: dict[str, Any] = {}
    if not settings.sae_ref.startswith("saelens:"):
        described = describe_sae_dir(Path(settings.sae_ref))
    model = (
        settings.model
        or described.get("model")
        or getattr(sae_metadata, "model_name", None)
        or DEFAULT_MODEL
    )
    hook = (
        settings.hook
        or described.get("hook")
        or getattr(sae_metadata, "hook_name", None)
        or DEFAULT_HOOK
    )
    return str(model), HookPoint.parse(str(hook))


class ModelBackend:
    """Implements serve's TransformBackend on a real HookedTransformer + SAE."""

    def __init__(self, model: Any, sae: Any, hook: HookPoint, settings: ExtractionSettings) -> None:
        d_in = int(sae.W_enc.shape[0])
        width = int(model.cfg.d_model)
        if d_in != width:  # every allowed site is d_model wide
            raise InvalidHook(
                f"the SAE reads vectors of size {d_in}, but {hook.name} of this model has size {width}"
            )
        self.hook = hook
        self.extractor = FeatureExtractor(model, sae, hook, settings)
        self.steerer = Steerer(model, sae, hook)
        self._baselines: dict[tuple[str, SamplingSettings], str] = {}

    @classmethod
    def load(cls, settings: WorkerSettings) -> ModelBackend:
        from gpu_worker.models import load_language_model, load_sae

        sae = load_sae(settings.sae_ref, device=settings.device)
        metadata = getattr(sae.cfg, "metadata", None)
        model_id, hook = resolve_model_and_hook(settings, metadata)
        trained_on = getattr(metadata, "hook_name", None)
        if trained_on and trained_on != hook.name:
            # The seed's defect: an SAE read at a hook it was not trained on.
            raise InvalidHook(f"the SAE was trained on {trained_on}, not on {hook.name}")
        logger.info("loading %s for hook %s", model_id, hook.name)
        model = load_language_model(
            model_id,
            cache_dir=settings.cache_dir,
            device=settings.device,
            hf_token=settings.hf_token,
            # Pretrained SAEs name how their model must be loaded (e.g. center_writing_weights).
            from_pretrained_kwargs=getattr(metadata, "model_from_pretrained_kwargs", None) or None,
        )
        sizes = (
            {}
            if settings.max_batch_tokens is None
            else {"max_batch_tokens": settings.max_batch_tokens}
        )
        extraction = ExtractionSettings(
            features_per_token=settings.features_per_token,
            max_prompt_tokens=settings.max_prompt_tokens,
            ce_loss=settings.ce_loss,
            **sizes,
        )
        return cls(model, sae, hook, extraction)

    def extract(self, records: Sequence[ExtractionRecord]) -> list[dict[str, Any]]:
        results = self.extractor.extract([record.text for record in records])
        return [
            {**record.header(), **result_to_json(result)}
            for record, result in zip(records, results, strict=True)
        ]

    def steer_many(self, records: Sequence[SteerRecord]) -> list[dict[str, Any] | SaeflowError]:
        """One answer per steer record (a bad one gets its error, the others still run).

        Records of the same prompt and sampling are generated as one batch (with the
        unsteered baseline unless this worker has it already): steer=auto's 3 features x 2
        strengths on a prompt are one batch of 7 rows instead of 12 generations."""
        answers: dict[int, dict[str, Any] | SaeflowError] = {}
        groups: dict[tuple[str, SamplingSettings], list[int]] = {}
        for index, record in enumerate(records):
            try:
                self.steerer.direction(record.feature)  # a bad feature id fails alone
                key = (record.prompt, _sampling(record))
            except SaeflowError as err:
                answers[index] = err
                continue
            groups.setdefault(key, []).append(index)
        for (prompt, sampling), indices in groups.items():
            for chunk in _chunks(indices, _MAX_STEER_ROWS):
                steers: list[Steer | None] = [
                    Steer(records[i].feature, records[i].strength) for i in chunk
                ]
                # The baseline depends on the prompt and the sampling only: it is generated
                # once per worker, in the first batch of its prompt.
                baseline = self._baselines.get((prompt, sampling))
                texts = self.steerer.generate_many(
                    prompt, sampling, steers if baseline is not None else [None, *steers]
                )
                if baseline is None:
                    baseline = self._baselines[(prompt, sampling)] = texts.pop(0)
                for i, steered in zip(chunk, texts, strict=True):
                    answers[i] = {"steer": records[i].raw, "baseline": baseline, "steered": steered}
        return [answers[index] for index in range(len(records))]


def _sampling(record: SteerRecord) -> SamplingSettings:
    return SamplingSettings(
        max_new_tokens=record.max_new_tokens,
        temperature=record.temperature,
        freq_penalty=record.freq_penalty,
        seed=record.seed,
    )


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
