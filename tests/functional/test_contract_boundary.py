"""Cross-boundary: what the Lambda side writes, read by the worker's own readers.

resolve_sae (the Lambda step, on a moto bucket) plans a training job and a serve container;
the worker reads the hyperparameters the way a SageMaker job gets them
(``input/config/hyperparameters.json``, strings) and the serve environment with the same
functions ``python -m gpu_worker`` uses. One type (saeflow.core.contract.TrainSettings)
validates both sides, so whatever validation accepts, the worker accepts, at every bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpu_worker.__main__ import _worker_settings, build_parser
from gpu_worker.checkpoints import config_fingerprint
from gpu_worker.config import TrainConfig
from gpu_worker.sagemaker_contract import ContainerPaths, read_hyperparameters
from saeflow.core.contract import TrainOptions, read_sae_descriptor
from saeflow.core.errors import InvalidHook, InvalidRunOptions
from saeflow.core.options import RunOptions
from saeflow.core.schema import Schema
from saeflow.steps import resolve_sae
from saeflow.steps.resolve_sae import ResolveSaeSettings

RUN_ID = "demo-0123456789ab"


def planned(store, options: dict[str, Any], settings=None) -> dict[str, Any]:
    event = {"run": {"run_id": RUN_ID, "options": RunOptions.from_dict(options).to_dict()}}
    return resolve_sae.run(event, store=store, settings=settings or ResolveSaeSettings())


def as_the_job_reads_them(tmp_path: Path, hyperparameters: dict[str, str]) -> TrainConfig:
    """hyperparameters.json as SageMaker writes it, read by the worker's train command."""
    paths = ContainerPaths(tmp_path / "opt-ml")
    paths.hyperparameters_file.parent.mkdir(parents=True)
    paths.hyperparameters_file.write_text(json.dumps(hyperparameters))
    return TrainConfig.from_hyperparameters(read_hyperparameters(paths))


def _bounds() -> list[dict[str, Any]]:
    """Every numeric train option at its lowest and highest accepted value."""
    cases: list[dict[str, Any]] = []
    schema = TrainOptions.model_json_schema()["properties"]
    for name, spec in schema.items():
        for bound in ("minimum", "maximum", "exclusiveMinimum"):
            if bound not in spec:
                continue
            value = spec[bound]
            if bound == "exclusiveMinimum":
                value = value + (1 if spec["type"] == "integer" else 1e-9)
            train = {name: value}
            if name in ("training_tokens", "batch_size_tokens") and bound == "minimum":
                train |= {"batch_size_tokens": 1, "training_tokens": 1000}
            if name == "batch_size_tokens" and bound == "maximum":
                train["training_tokens"] = value
            if name == "context_size" and bound == "maximum":
                train["eval_tokens"] = value
            if name == "k" and bound == "maximum":
                train["expansion_factor"] = 8  # 4608 >= 4096
            cases.append(train)
    return cases


@pytest.mark.parametrize("train", _bounds(), ids=lambda t: json.dumps(t, sort_keys=True))
def test_every_train_setting_validation_accepts_the_worker_accepts(store, tmp_path, train):
    options = {"train": train}
    spec = planned(store, options)["training"]
    config = as_the_job_reads_them(tmp_path, spec["hyperparameters"])
    run = RunOptions.from_dict(options)
    assert config.model_dump() == {
        **run.train.model_dump(),
        "model": run.model,
        "hook": run.hook,
        "device": "auto",
    }


@pytest.mark.parametrize(
    ("options", "check"),
    [
        (
            {"train": {"lr": 3e-5, "l1_coefficient": 0.1}},
            lambda c: (c.lr, c.l1_coefficient) == (3e-5, 0.1),
        ),
        ({"train": {"training_tokens": 2e5}}, lambda c: c.training_tokens == 200_000),
        ({"model": "default"}, lambda c: c.model == "smollm2-135m-instruct"),
        ({"hook": "blocks.3.hook_mlp_out"}, lambda c: c.hook_point.site == "mlp_out"),
        (
            {"train": {"corpus": "s3://saeflow-test/corpora/web/"}},
            lambda c: c.corpus == "channel:corpus",
        ),
        (
            {"train": {"corpus": "hf:roneneldan/TinyStories"}},
            lambda c: c.corpus == "hf:roneneldan/TinyStories",
        ),
    ],
    ids=["floats", "integral float", "model alias", "hook", "s3 corpus", "hf corpus"],
)
def test_values_cross_the_boundary_unchanged(store, tmp_path, options, check):
    config = as_the_job_reads_them(tmp_path, planned(store, options)["training"]["hyperparameters"])
    assert check(config)


@pytest.mark.parametrize(
    "train",
    [
        {"lr": 1.5},
        {"l1_coefficient": 0},
        {"context_size": 9000, "eval_tokens": 9000},
        {"training_tokens": 2000, "batch_size_tokens": 4096},
        {"eval_tokens": 64, "context_size": 128},
        {"corpus": "hf:"},
    ],
    ids=json.dumps,
)
def test_what_the_worker_would_refuse_validation_refuses_first(train):
    """The defects of two validators: each of these passed the Lambda and failed in a job."""
    with pytest.raises(InvalidRunOptions):
        RunOptions.from_dict({"train": train})
    defaults = TrainConfig().to_hyperparameters()
    strings = {**defaults, **{k: json.dumps(v).strip('"') for k, v in train.items()}}
    with pytest.raises(InvalidRunOptions):
        TrainConfig.from_hyperparameters(strings)


def test_the_train_types_are_one(store):
    assert TrainConfig.__mro__[1] is TrainOptions and issubclass(TrainOptions, Schema)
    assert set(TrainOptions.model_fields) < set(TrainConfig.model_fields)
    with pytest.raises(InvalidHook):
        TrainConfig.from_hyperparameters({"hook": "blocks.x"})


def test_one_sae_one_checkpoint_fingerprint(store, tmp_path):
    """Two runs with the same train options plan identical jobs (the SAE hash and the
    worker's checkpoint fingerprint agree), so a retried run resumes the first one's job."""
    first = planned(store, {"train": {"k": 16}})["training"]
    second = planned(store, {"train": {"k": 16}, "top_k_features": 5})["training"]
    assert first["checkpoint_uri"] == second["checkpoint_uri"]
    a = as_the_job_reads_them(tmp_path / "a", first["hyperparameters"])
    b = as_the_job_reads_them(tmp_path / "b", second["hyperparameters"])
    assert config_fingerprint(a) == config_fingerprint(b)


def test_the_serve_environment_is_read_back_by_the_worker(store):
    piece = planned(
        store,
        {"hook": "blocks.7.hook_attn_out", "features_per_token": 12},
        ResolveSaeSettings(max_prompt_tokens=300),
    )
    args = build_parser().parse_args(["serve"])
    settings = _worker_settings(args, piece["serve_environment"], "/opt/ml/model")
    assert (settings.model, settings.hook) == ("smollm2-135m-instruct", "blocks.7.hook_attn_out")
    assert (settings.features_per_token, settings.max_prompt_tokens) == (12, 300)


def test_the_sae_reference_is_what_the_worker_reads(store):
    sae = "saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
    planned(store, {"sae": sae, "model": "google/gemma-2-2b", "hook": "blocks.20.hook_resid_post"})
    written = store.get_bytes(f"runs/{RUN_ID}/sae-ref/saeflow_sae.json")
    # gpu_worker.models.load_sae reads the directory's saeflow_sae.json with this function.
    reference = read_sae_descriptor(written, "sae-ref/saeflow_sae.json")
    assert reference.option == sae
    assert (reference.model, reference.hook) == ("google/gemma-2-2b", "blocks.20.hook_resid_post")
