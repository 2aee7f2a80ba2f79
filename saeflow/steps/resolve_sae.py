"""resolve_sae: decide where the run's SAE comes from. Returns the ``$.sae`` piece.

Input: the state with ``$.run`` (validate's piece). ``options.sae`` decides:

- ``train``: ``sae_hash(model, hook, train options)``; if
  ``saes/<slug>/<hook>/<hash>/metrics.json`` exists (register_sae writes it last) the SAE is
  reused: mode ``cached``; else mode ``train`` with the worker's string hyperparameters.
- ``saelens:<release>/<sae_id>``: writes ``runs/<id>/sae-ref/saeflow_sae.json``
  (``{"source": "saelens", "release", "sae_id", "model", "hook"}``), mode ``pretrained``; the
  worker loads it through SAELens's registry (serve's model dir = that sae-ref prefix).
- ``s3://bucket/prefix``: an SAELens-format directory; ``cfg.json`` must exist there, else
  :class:`SaeNotFound`. Mode ``pretrained``.

Piece: ``{"mode", "uri" (s3://..., ends with /), "sae_id", "weights_sha256" (None until
register_sae hashes a freshly trained SAE), "weights_sha256_basis", "training": {...} | None,
"serve_environment": {"SAEFLOW_MODEL", "SAEFLOW_HOOK", "SAEFLOW_TOP_K",
"SAEFLOW_MAX_PROMPT_TOKENS", "SAEFLOW_CE_LOSS"}}`` with ``training`` = ``{"hyperparameters":
{str: str}, "output_path", "checkpoint_uri", "input_data_config": [...]}``.
``SAEFLOW_CE_LOSS`` is ``"1"`` when ``options.wants_ce_on_prompts(n)`` for the run's
``n = $.run.n_prompts + $.run.n_contrast_prompts`` (the extraction then also returns each
prompt's CE-loss sums with the SAE spliced in: three more forward passes from the hook on),
else ``"0"``.

A train corpus given as ``s3://...`` becomes the SageMaker channel ``corpus`` (the
hyperparameter then reads ``channel:corpus``); otherwise ``input_data_config`` is ``[]``
(SageMaker rejects an empty InputDataConfig: the state machine omits it in that case).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from saeflow.core import layout
from saeflow.core.errors import SaeNotFound
from saeflow.core.options import RunOptions, training_hyperparameters
from saeflow.core.promptset import DEFAULT_MAX_PROMPT_TOKENS
from saeflow.ports import ObjectStore
from saeflow.steps.sae_weights import directory_weights, saelens_weights

logger = logging.getLogger(__name__)

CORPUS_CHANNEL = "corpus"


@dataclass(frozen=True)
class ResolveSaeSettings:
    """Deployment settings of the resolve_sae step."""

    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    """Passed to the serve container as SAEFLOW_MAX_PROMPT_TOKENS."""


def serve_environment(
    options: RunOptions, settings: ResolveSaeSettings, n_prompts: int
) -> dict[str, str]:
    """Environment of the serve (batch transform) container; ``n_prompts`` counts every
    prompt the run extracts (main and contrast sets)."""
    return {
        "SAEFLOW_MODEL": options.model,
        "SAEFLOW_HOOK": options.hook,
        "SAEFLOW_TOP_K": str(options.features_per_token),
        "SAEFLOW_MAX_PROMPT_TOKENS": str(settings.max_prompt_tokens),
        "SAEFLOW_CE_LOSS": "1" if options.wants_ce_on_prompts(n_prompts) else "0",
    }


def training_spec(store: ObjectStore, run_id: str, options: RunOptions) -> dict[str, Any]:
    """What the createTrainingJob task needs."""
    hyperparameters = training_hyperparameters(options)
    input_data_config: list[dict[str, Any]] = []
    if options.train.corpus.startswith("s3://"):
        hyperparameters["corpus"] = f"channel:{CORPUS_CHANNEL}"
        input_data_config.append(
            {
                "ChannelName": CORPUS_CHANNEL,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": options.train.corpus,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        )
    return {
        "hyperparameters": hyperparameters,
        "output_path": store.uri(layout.train_output_prefix(run_id)),
        "checkpoint_uri": store.uri(layout.checkpoint_prefix(run_id)),
        "input_data_config": input_data_config,
    }


def _resolve_trained(store: ObjectStore, run_id: str, options: RunOptions) -> dict[str, Any]:
    hash_ = layout.sae_hash(options.model, options.hook, dataclasses.asdict(options.train))
    prefix = layout.sae_prefix(options.model, options.hook, hash_)
    cached = store.exists(prefix + layout.SAE_METRICS)
    logger.info("SAE %s: %s", prefix, "cached" if cached else "to train")
    # A trained SAE's weights are hashed by register_sae ($.registered.weights_sha256).
    weights = directory_weights(store, prefix) if cached else {"weights_sha256": None}
    return {
        "mode": "cached" if cached else "train",
        "uri": store.uri(prefix),
        "sae_id": layout.sae_id(options.model, options.hook, hash_),
        "training": None if cached else training_spec(store, run_id, options),
        **weights,
    }


def _resolve_saelens(store: ObjectStore, run_id: str, options: RunOptions) -> dict[str, Any]:
    release, _, sae_name = options.sae[len("saelens:") :].partition("/")
    store.put_json(
        layout.sae_ref_key(run_id),
        {
            "source": "saelens",
            "release": release,
            "sae_id": sae_name,
            "model": options.model,
            "hook": options.hook,
        },
    )
    return {
        "mode": "pretrained",
        "uri": store.uri(layout.sae_ref_prefix(run_id)),
        "sae_id": options.sae,
        "training": None,
        **saelens_weights(release, sae_name),
    }


def _resolve_s3_dir(store: ObjectStore, options: RunOptions) -> dict[str, Any]:
    bucket, prefix = layout.parse_s3_uri(options.sae)
    prefix = prefix.rstrip("/") + "/"
    source = store if bucket == store.bucket else store.for_bucket(bucket)
    try:
        found = source.exists(prefix + "cfg.json")
    except Exception as exc:  # e.g. AccessDenied on a foreign bucket: still "not found"
        raise SaeNotFound(f"cannot read {options.sae}: {exc}") from exc
    if not found:
        raise SaeNotFound(
            f"no SAELens SAE at {options.sae}: {source.uri(prefix + 'cfg.json')} does not exist"
        )
    # Inside our own saes/ the registry id is the key form, so labels are shared with runs
    # that trained the same SAE.
    own = bucket == store.bucket and prefix.startswith(layout.SAES_PREFIX)
    return {
        "mode": "pretrained",
        "uri": source.uri(prefix),
        "sae_id": prefix.rstrip("/") if own else source.uri(prefix.rstrip("/")),
        "training": None,
        **directory_weights(source, prefix),
    }


def run(
    event: dict[str, Any], *, store: ObjectStore, settings: ResolveSaeSettings
) -> dict[str, Any]:
    run_piece = event["run"]
    run_id = run_piece["run_id"]
    options = RunOptions.from_dict(run_piece["options"])
    if options.sae == "train":
        piece = _resolve_trained(store, run_id, options)
    elif options.sae.startswith("saelens:"):
        piece = _resolve_saelens(store, run_id, options)
    else:
        piece = _resolve_s3_dir(store, options)
    n_prompts = int(run_piece["n_prompts"]) + int(run_piece["n_contrast_prompts"])
    piece["serve_environment"] = serve_environment(options, settings, n_prompts)
    return piece
