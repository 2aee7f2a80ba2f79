import hashlib
import io
import json
import os
import tarfile

import pytest

from saeflow.core import layout
from saeflow.core.errors import QualityGateFailed, SaeRegistrationInProgress, TrainingFailed
from saeflow.core.options import RunOptions
from saeflow.steps import register_sae

RUN_ID = "demo-0123456789ab"
JOB = "sf-0123456789ab-train"
GOOD_METRICS = {
    "explained_variance": 0.82,
    "mse": 0.01,
    "l0": 32.0,
    "dead_fraction": 0.05,
    "never_fired_fraction": 0.02,
    "ce_loss_recovered": 0.97,
    "d_in": 576,
    "d_sae": 4608,
    "architecture": "topk",
}


def model_tar(files: dict[str, bytes]) -> bytes:
    """A model.tar.gz laid out as SageMaker packs /opt/ml/model."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("./extra")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
    return buffer.getvalue()


def sae_files(metrics: dict, weights: bytes = b"weights") -> dict[str, bytes]:
    return {
        "./cfg.json": json.dumps({"d_in": 576, "d_sae": 4608}).encode(),
        "sae_weights.safetensors": weights,
        "metrics.json": json.dumps(metrics).encode(),
        "feature_data.jsonl": b'{"id": 0}\n',
        layout.SAE_FEATURE_SUMMARY: b'{"schema_version": 1}',
        layout.SAE_CORPUS_WINDOWS: b'{"tokens": [], "features": []}\n',
        "saeflow_sae.json": b"{}",
    }


def state(store, tar_bytes: bytes, gate: dict | None = None, run_id: str = RUN_ID) -> dict:
    key = layout.train_model_artifact_key(run_id, JOB)
    store.put_bytes(key, tar_bytes)
    options = RunOptions.from_dict({"gate": gate or {}})
    sae_prefix = layout.sae_prefix(options.model, options.hook, "0123456789abcdef")
    return {
        "run_id": run_id,
        "run": {"run_id": run_id, "options": options.to_dict()},
        "sae": {"mode": "train", "uri": store.uri(sae_prefix)},
        "training": {"job_name": JOB, "model_artifacts": store.uri(key), "billable_seconds": 60},
    }


def test_registers_a_good_sae(store):
    # 9 MB of weights: the upload from the tar stream goes multipart.
    weights = os.urandom(9 * 1024 * 1024)
    event = state(store, model_tar(sae_files(GOOD_METRICS, weights)))
    registered = register_sae.run(event, store=store)
    assert registered["uri"] == event["sae"]["uri"]
    assert registered["metrics"] == GOOD_METRICS
    assert registered["gate"]["passed"] is True
    _, prefix = layout.parse_s3_uri(event["sae"]["uri"])
    assert sorted(store.list_keys(prefix)) == sorted(
        prefix + name
        for name in (
            "cfg.json",
            "sae_weights.safetensors",
            "metrics.json",
            "feature_data.jsonl",
            "feature_summary.json",
            "corpus_windows.jsonl",
            "saeflow_sae.json",
            "saeflow_registration.json",
            "weights.sha256",
        )
    )
    assert store.get_bytes(prefix + "sae_weights.safetensors") == weights
    assert store.get_json(prefix + "saeflow_registration.json")["run_id"] == RUN_ID
    assert registered["adopted"] is False
    # The label registry's name for this SAE: hashed while it streamed past.
    digest = hashlib.sha256(weights).hexdigest()
    assert registered["weights_sha256"] == digest
    assert store.get_bytes(prefix + "weights.sha256").decode() == digest
    candidate = layout.sae_candidate_prefix(RUN_ID)
    assert store.exists(candidate + "cfg.json")


def test_gate_failure_names_the_numbers_and_registers_nothing(store):
    bad = {**GOOD_METRICS, "explained_variance": 0.2, "dead_fraction": 0.9}
    event = state(store, model_tar(sae_files(bad)))
    with pytest.raises(QualityGateFailed) as info:
        register_sae.run(event, store=store)
    assert "explained_variance 0.2 (needs >= 0.5)" in info.value.message
    assert "dead_fraction 0.9 (needs <= 0.5)" in info.value.message
    _, prefix = layout.parse_s3_uri(event["sae"]["uri"])
    assert list(store.list_keys(prefix)) == []


def test_gate_thresholds_come_from_options(store):
    event = state(store, model_tar(sae_files(GOOD_METRICS)), gate={"min_explained_variance": 0.9})
    with pytest.raises(QualityGateFailed, match="explained_variance"):
        register_sae.run(event, store=store)


def test_missing_files_are_a_training_failure(store):
    files = sae_files(GOOD_METRICS)
    del files["metrics.json"]
    with pytest.raises(TrainingFailed, match=r"metrics\.json"):
        register_sae.run(state(store, model_tar(files)), store=store)


def test_unsafe_member_paths_are_skipped(store):
    files = {**sae_files(GOOD_METRICS), "../escape.txt": b"x", "/abs.txt": b"y"}
    event = state(store, model_tar(files))
    register_sae.run(event, store=store)
    keys = list(store.list_keys(""))
    assert not [k for k in keys if "escape" in k]
    assert layout.sae_candidate_prefix(RUN_ID) + "abs.txt" in keys


def test_not_a_tar(store):
    with pytest.raises(TrainingFailed, match=r"not a valid tar\.gz"):
        register_sae.run(state(store, b"not a tarball at all"), store=store)


def test_no_artifacts(store):
    event = state(store, model_tar(sae_files(GOOD_METRICS)))
    event["training"]["model_artifacts"] = store.uri("runs/x/train/missing/output/model.tar.gz")
    with pytest.raises(TrainingFailed, match="no model artifacts"):
        register_sae.run(event, store=store)


@pytest.mark.parametrize("metrics", [b"{broken", b"[1, 2]"])
def test_unreadable_metrics_are_a_training_failure(store, metrics):
    files = {**sae_files(GOOD_METRICS), "metrics.json": metrics}
    with pytest.raises(TrainingFailed, match="metrics"):
        register_sae.run(state(store, model_tar(files)), store=store)


# ---------------------------------------------------------------- atomic registration

OTHER_RUN = "other-0123456789ab"


def registered_prefix(event: dict) -> str:
    return layout.parse_s3_uri(event["sae"]["uri"])[1]


def test_two_runs_of_one_sae_end_with_one_consistent_sae(store):
    first = state(store, model_tar(sae_files(GOOD_METRICS, b"weights of run one")))
    second = state(
        store,
        model_tar(sae_files({**GOOD_METRICS, "l0": 31.0}, b"weights of run two")),
        run_id=OTHER_RUN,
    )
    assert register_sae.run(first, store=store)["adopted"] is False
    adopted = register_sae.run(second, store=store)
    prefix = registered_prefix(first)
    # The second run uses the first run's SAE: files and metrics of one training job.
    assert adopted["adopted"] is True and adopted["metrics"] == GOOD_METRICS
    assert store.get_bytes(prefix + "sae_weights.safetensors") == b"weights of run one"
    # ... and its labels: the registered weights' hash, never the second run's own.
    assert adopted["weights_sha256"] == hashlib.sha256(b"weights of run one").hexdigest()
    assert store.get_json(prefix + "metrics.json") == GOOD_METRICS


def test_a_run_that_finds_another_registering_waits(store):
    first = state(store, model_tar(sae_files(GOOD_METRICS)))
    second = state(store, model_tar(sae_files(GOOD_METRICS, b"two")), run_id=OTHER_RUN)
    prefix = registered_prefix(first)
    # The first run claimed and is copying (its metrics.json not there yet).
    claim = {"run_id": RUN_ID, "claimed_at": 1000.0}
    store.put_json(prefix + "saeflow_registration.json", claim)
    with pytest.raises(SaeRegistrationInProgress, match=RUN_ID):
        register_sae.run(second, store=store, clock=lambda: 1000.0 + 60)
    assert not store.exists(prefix + "sae_weights.safetensors")
    # The first run's retried invocation continues its own claim.
    assert register_sae.run(first, store=store, clock=lambda: 1100.0)["adopted"] is False
    # Now the waiting run adopts it.
    assert register_sae.run(second, store=store, clock=lambda: 1200.0)["adopted"] is True


def test_a_stale_claim_is_taken_over(store):
    event = state(store, model_tar(sae_files(GOOD_METRICS)), run_id=OTHER_RUN)
    prefix = registered_prefix(event)
    store.put_json(prefix + "saeflow_registration.json", {"run_id": RUN_ID, "claimed_at": 0.0})
    registered = register_sae.run(event, store=store, clock=lambda: register_sae.CLAIM_TTL_S + 1.0)
    assert registered["adopted"] is False
    assert store.get_json(prefix + "saeflow_registration.json")["run_id"] == OTHER_RUN
    assert store.exists(prefix + "metrics.json")
    assert store.get_bytes(prefix + "weights.sha256").decode() == registered["weights_sha256"]


def test_an_adopted_sae_still_meets_this_runs_gate(store):
    register_sae.run(state(store, model_tar(sae_files(GOOD_METRICS))), store=store)
    strict = state(
        store,
        model_tar(sae_files({**GOOD_METRICS, "explained_variance": 0.95})),
        gate={"min_explained_variance": 0.9},
        run_id=OTHER_RUN,
    )
    with pytest.raises(QualityGateFailed, match="registered at"):
        register_sae.run(strict, store=store)
