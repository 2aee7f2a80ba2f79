"""resolve_sae: decide where the run's SAE comes from. Returns the ``$.sae`` piece.

Input: the state with ``$.run`` (validate's piece). ``options.sae`` decides:

- ``train``: ``sae_hash(model, hook, train options)``; if
  ``saes/<slug>/<hook>/<hash>/metrics.json`` exists (register_sae writes it last) the SAE is
  reused: mode ``cached``; else mode ``train`` with the job's settings
  (:class:`saeflow.core.contract.TrainSettings` as string hyperparameters).
- ``saelens:<release>/<sae_id>``: located through the catalog (SAELens's registry, the hub
  or its local cache: :class:`SaeNotFound` when it does not exist; its ``cfg.json``, when
  readable, is checked against the run's hook and steering), then
  ``runs/<id>/sae-ref/saeflow_sae.json`` (:class:`saeflow.core.contract.SaeReference`) is
  written, mode ``pretrained``; serve's model dir is that sae-ref prefix.
- ``s3://<this bucket>/saes/...``: an SAELens-format directory; its ``cfg.json`` must exist
  (else :class:`SaeNotFound`) and agree with the run. Mode ``pretrained``.

Piece: ``{"mode", "uri" (s3://..., ends with /), "sae_id", "weights_sha256" (None until
register_sae hashes a freshly trained SAE), "weights_sha256_basis", "training": {...} | None,
"serve_environment": {"SAEFLOW_MODEL", "SAEFLOW_HOOK", "SAEFLOW_TOP_K",
"SAEFLOW_MAX_PROMPT_TOKENS", "SAEFLOW_CE_LOSS"}}`` with ``training`` = ``{"hyperparameters": {str: str},
"output_path", "checkpoint_uri", "input_data_config": [...], "max_runtime_s", "timeout_s"}``.
Checkpoints live per SAE (``checkpoints/<slug>/<hook>/<hash>/``): a retried run resumes.
``SAEFLOW_CE_LOSS`` is ``"1"`` when ``options.wants_ce_on_prompts(n)`` for the run's
``n = $.run.n_prompts + $.run.n_contrast_prompts`` (the extraction then also returns each
prompt's CE-loss sums with the SAE spliced in: three more forward passes from the hook on),
else ``"0"``.

A train corpus given as ``s3://...`` becomes the SageMaker channel ``corpus`` (the
hyperparameter then reads ``channel:corpus``); otherwise ``input_data_config`` is ``[]``
(SageMaker rejects an empty InputDataConfig: the state machine omits it in that case).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from saeflow.core import layout
from saeflow.core.contract import (
    CORPUS_CHANNEL,
    SAE_CONFIG_FILE,
    SaeReference,
    ServeSettings,
)
from saeflow.core.errors import ForbiddenInput, SaeNotFound
from saeflow.core.options import RunOptions, training_hyperparameters
from saeflow.core.promptset import DEFAULT_MAX_PROMPT_TOKENS
from saeflow.core.run_policy import check_sae_config
from saeflow.ports import ObjectStore, PretrainedSaeCatalog
from saeflow.steps.sae_weights import directory_weights, saelens_weights

logger = logging.getLogger(__name__)

# A training task may run this much longer than the job's MaxRuntimeInSeconds: instance
# start, image pull, model download, and the upload of model.tar.gz.
TRAINING_TASK_MARGIN_S = 3600


@dataclass(frozen=True)
class ResolveSaeSettings:
    """Deployment settings of the resolve_sae step."""

    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    """Passed to the serve container as SAEFLOW_MAX_PROMPT_TOKENS."""
    max_training_seconds: int = 86_400
    """A training job's MaxRuntimeInSeconds (template parameter MaxTrainingSeconds)."""


def serve_environment(
    options: RunOptions, settings: ResolveSaeSettings, n_prompts: int
) -> dict[str, str]:
    """Environment of the serve (batch transform) container; ``n_prompts`` counts every
    prompt the run extracts (main and contrast sets)."""
    return ServeSettings(
        model=options.model,
        hook=options.hook,
        features_per_token=options.features_per_token,
        max_prompt_tokens=settings.max_prompt_tokens,
        ce_loss=options.wants_ce_on_prompts(n_prompts),
    ).to_environment()


def training_spec(
    store: ObjectStore,
    run_id: str,
    options: RunOptions,
    settings: ResolveSaeSettings,
    hash_: str,
) -> dict[str, Any]:
    """What the createTrainingJob task needs (``hash_``: the SAE's, from its options)."""
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
    checkpoints = layout.sae_checkpoint_prefix(options.model, options.hook, hash_)
    return {
        "hyperparameters": hyperparameters,
        "output_path": store.uri(layout.train_output_prefix(run_id)),
        "checkpoint_uri": store.uri(checkpoints),
        "input_data_config": input_data_config,
        "max_runtime_s": settings.max_training_seconds,
        "timeout_s": settings.max_training_seconds + TRAINING_TASK_MARGIN_S,
    }


def _resolve_trained(
    store: ObjectStore, run_id: str, options: RunOptions, settings: ResolveSaeSettings
) -> dict[str, Any]:
    hash_ = layout.sae_hash(options.model, options.hook, options.train.model_dump())
    prefix = layout.sae_prefix(options.model, options.hook, hash_)
    cached = store.exists(prefix + layout.SAE_METRICS)
    logger.info("SAE %s: %s", prefix, "cached" if cached else "to train")
    # A trained SAE's weights are hashed by register_sae ($.registered.weights_sha256).
    weights = directory_weights(store, prefix) if cached else {"weights_sha256": None}
    return {
        "mode": "cached" if cached else "train",
        "uri": store.uri(prefix),
        "sae_id": layout.sae_id(options.model, options.hook, hash_),
        "training": None if cached else training_spec(store, run_id, options, settings, hash_),
        **weights,
    }


def _resolve_saelens(
    store: ObjectStore, run_id: str, options: RunOptions, catalog: PretrainedSaeCatalog | None
) -> dict[str, Any]:
    release, _, sae_name = options.sae[len("saelens:") :].partition("/")
    if catalog is not None:
        found = catalog.locate(f"{release}/{sae_name}")
        release, sae_name = found.release, found.sae_id
        if found.config is not None:
            check_sae_config(options, found.config)
    reference = SaeReference(
        release=release, sae_id=sae_name, model=options.model, hook=options.hook
    )
    store.put_json(layout.sae_ref_key(run_id), reference.model_dump())
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
    if bucket != store.bucket or not prefix.startswith(layout.SAES_PREFIX):
        # validate refuses this already; the SageMaker role could not read it either
        raise ForbiddenInput(f"sae: {options.sae} is not under s3://{store.bucket}/saes/")
    try:
        config = store.get_json(prefix + SAE_CONFIG_FILE)
    except KeyError as exc:  # ObjectNotFound
        raise SaeNotFound(
            f"no SAELens SAE at {options.sae}: {store.uri(prefix + SAE_CONFIG_FILE)} does not exist"
        ) from exc
    except ValueError as exc:
        raise SaeNotFound(f"{store.uri(prefix + SAE_CONFIG_FILE)} is not valid JSON") from exc
    if isinstance(config, dict):
        check_sae_config(options, config)
    # The registry id is the key form, so labels are shared with runs that trained it.
    return {
        "mode": "pretrained",
        "uri": store.uri(prefix),
        "sae_id": prefix.rstrip("/"),
        "training": None,
        **directory_weights(store, prefix),
    }


def run(
    event: dict[str, Any],
    *,
    store: ObjectStore,
    settings: ResolveSaeSettings,
    catalog: PretrainedSaeCatalog | None = None,
) -> dict[str, Any]:
    run_piece = event["run"]
    run_id = run_piece["run_id"]
    options = RunOptions.from_dict(run_piece["options"])
    if options.sae == "train":
        piece = _resolve_trained(store, run_id, options, settings)
    elif options.sae.startswith("saelens:"):
        piece = _resolve_saelens(store, run_id, options, catalog)
    else:
        piece = _resolve_s3_dir(store, options)
    n_prompts = int(run_piece.get("n_prompts") or 0) + int(run_piece.get("n_contrast_prompts") or 0)
    piece["serve_environment"] = serve_environment(options, settings, n_prompts)
    return piece
