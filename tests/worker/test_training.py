"""gpu_worker config, corpus, training, evaluation and feature data (real model, real SAELens)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpu_worker.config import TrainConfig, field_help
from gpu_worker.corpus import (
    CorpusUnavailable,
    collect_windows,
    is_heldout,
    iter_documents,
    split_documents,
    statistics_mask,
)
from gpu_worker.feature_data import FeatureDataOptions
from saeflow.core.errors import InvalidHook, InvalidRunOptions

REPO = Path(__file__).resolve().parents[2]

# --- TrainConfig -----------------------------------------------------------------------


def test_defaults_are_valid_and_round_trip_through_strings() -> None:
    config = TrainConfig()
    assert config.hook_point.layer == 15 and config.architecture == "topk"
    assert TrainConfig.from_hyperparameters(config.to_hyperparameters()) == config


def test_string_hyperparameters_are_converted() -> None:
    config = TrainConfig.from_hyperparameters(
        {"k": "64", "lr": "3e-4", "training_tokens": "1e6", "architecture": '"batchtopk"'}
    )
    assert (config.k, config.lr, config.training_tokens) == (64, 3e-4, 1_000_000)
    assert config.architecture == "batchtopk"


@pytest.mark.parametrize(
    ("hyperparameters", "error", "message"),
    [
        ({"widht": "8"}, InvalidRunOptions, "unknown hyperparameter.*widht"),
        ({"k": "many"}, InvalidRunOptions, "'k' must be an integer"),
        ({"k": "2.5"}, InvalidRunOptions, "'k' must be an integer"),
        ({"k": "0"}, InvalidRunOptions, "'k' must be in 1..4096"),
        ({"lr": "-1"}, InvalidRunOptions, "'lr' must be in"),
        ({"architecture": "gated"}, InvalidRunOptions, "'architecture' must be one of"),
        ({"expansion_factor": "1000"}, InvalidRunOptions, "'expansion_factor'"),
        ({"training_tokens": "100"}, InvalidRunOptions, "'training_tokens' must be in 1000.."),
        ({"eval_tokens": "10"}, InvalidRunOptions, "'eval_tokens'"),
        ({"corpus": "hf:"}, InvalidRunOptions, "'corpus' needs a name"),
        ({"device": "tpu"}, InvalidRunOptions, "'device'"),
        ({"hook": "blocks.15.hook_resid"}, InvalidHook, "unknown hook site"),
        ({"hook": "layer 20"}, InvalidHook, "invalid hook"),
    ],
)
def test_bad_hyperparameters_are_named_errors(hyperparameters, error, message) -> None:
    with pytest.raises(error, match=message):
        TrainConfig.from_hyperparameters(hyperparameters)


def test_every_field_has_help() -> None:
    helps = field_help()
    assert set(helps) == set(TrainConfig().to_dict())
    assert all(text for text in helps.values())


def test_config_module_imports_without_torch() -> None:
    code = "import sys, gpu_worker.config; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "False"


# --- corpus ----------------------------------------------------------------------------


def test_statistics_mask_drops_position_zero_and_special_tokens() -> None:
    tokens = torch.tensor([[1, 5, 6, 2, 7], [1, 0, 8, 9, 1]])
    mask = statistics_mask(tokens, special_ids=[0, 1, 2])
    assert mask.tolist() == [
        [False, True, True, False, True],
        [False, False, True, True, False],
    ]


def test_default_corpus_split_is_deterministic_and_disjoint() -> None:
    documents = list(iter_documents("default", seed=3))
    assert len(documents) > 10_000
    train = set(split_documents(documents, "train"))
    heldout = set(split_documents(documents, "heldout"))
    assert not train & heldout
    assert 0.05 < len(heldout) / len(documents) < 0.15
    assert all(is_heldout(doc) for doc in heldout)
    # Same seed, same order; the split does not depend on the seed.
    assert list(iter_documents("default", seed=3))[:50] == documents[:50]
    assert set(split_documents(iter_documents("default", seed=4), "heldout")) == heldout


def test_folder_and_channel_corpora(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "corpus"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("A whole file is one document.")
    (folder / "b.jsonl").write_text('{"text": "first"}\n\n{"text": "second", "x": 1}\n{"y": 2}\n')
    (folder / "ignored.csv").write_text("not,read")
    expected = {"A whole file is one document.", "first", "second"}
    assert set(iter_documents(str(folder))) == expected
    assert set(iter_documents("channel:corpus", channels_dir=tmp_path / "data")) == expected


def test_corpus_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CorpusUnavailable, match="not a folder"):
        list(iter_documents(str(tmp_path / "missing")))
    with pytest.raises(CorpusUnavailable, match="channels folder"):
        list(iter_documents("channel:train"))
    with pytest.raises(CorpusUnavailable, match=r"no \.txt or \.jsonl"):
        list(iter_documents(str(tmp_path)))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(CorpusUnavailable, match=r"bad\.jsonl line 2 is not JSON"):
        list(iter_documents(str(tmp_path)))


@pytest.mark.slow
def test_windows_start_with_bos_and_count_only_masked_tokens(default_model) -> None:
    tokenizer = default_model.tokenizer
    windows = collect_windows(
        "default", tokenizer, context_size=32, n_tokens=500, split="heldout", seed=1
    )
    assert windows.tokens.shape[1] == 32
    assert (windows.tokens[:, 0] == tokenizer.bos_token_id).all()
    assert windows.n_tokens >= 500
    assert not windows.mask[:, 0].any()
    special = torch.tensor(tokenizer.all_special_ids)
    assert not torch.isin(windows.tokens[windows.mask], special).any()


# --- SAELens training of every architecture (no language model: fast) -------------------


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "jumprelu", "standard"])
def test_each_architecture_trains_and_reloads(architecture: str, tmp_path: Path) -> None:
    from sae_lens import SAE
    from sae_lens.training.sae_trainer import SAETrainer

    from gpu_worker.activations import ActivationBatches, ActivationPlan
    from gpu_worker.corpus import TokenWindows
    from gpu_worker.sae_setup import build_training_sae, trainer_config

    config = TrainConfig(
        architecture=architecture,
        expansion_factor=2,
        k=4,
        training_tokens=2048,
        batch_size_tokens=256,
        context_size=16,
        eval_tokens=16,
    )
    d_in = 32
    windows = TokenWindows(
        tokens=torch.zeros(160, 16, dtype=torch.long), mask=torch.ones(160, 16, dtype=torch.bool)
    )
    activations = torch.randn(160 * 16, d_in, generator=torch.Generator().manual_seed(0))
    batches = ActivationBatches(
        plan=ActivationPlan(windows=windows, chunk_windows=64),
        activations_for=lambda index: activations[index * 64 * 16 : (index + 1) * 64 * 16],
        batch_size=256,
        seed=0,
    )
    sae = build_training_sae(config, d_in, "cpu")
    trainer = SAETrainer(
        cfg=trainer_config(config, "cpu", tmp_path / "ckpt"), sae=sae, data_provider=batches
    )
    trainer.activation_scaler.scaling_factor = 1.0
    trained = trainer.fit()
    assert trainer.n_training_samples == 2048
    trained.save_inference_model(str(tmp_path / "sae"))
    reloaded = SAE.load_from_disk(str(tmp_path / "sae"))
    assert reloaded.cfg.d_sae == 64
    with torch.no_grad():
        out = reloaded(activations[:8])
    assert out.shape == (8, d_in) and torch.isfinite(out).all()


def test_activation_batches_resume_exactly_where_they_stopped() -> None:
    from gpu_worker.activations import ActivationBatches, ActivationPlan
    from gpu_worker.corpus import TokenWindows

    windows = TokenWindows(
        tokens=torch.zeros(10, 8, dtype=torch.long), mask=torch.ones(10, 8, dtype=torch.bool)
    )
    windows.mask[:, 0] = False
    plan = ActivationPlan(windows=windows, chunk_windows=3)  # 4 chunks of 21/21/21/7 samples
    rows = torch.arange(plan.n_samples, dtype=torch.float32).unsqueeze(1)

    def make(start: int) -> ActivationBatches:
        return ActivationBatches(
            plan=plan,
            activations_for=lambda i: rows[plan.starts[i] : plan.starts[i + 1]],
            batch_size=8,
            seed=5,
            start_sample=start,
        )

    full = make(0)
    served = [next(full) for _ in range(12)]  # 96 samples: wraps past the 70 there are
    resumed = make(40)
    assert torch.equal(next(resumed), served[5])
    first_pass = torch.cat(served)[:70].flatten().sort().values
    assert torch.equal(first_pass, rows.flatten())  # every sample once per pass


# --- the whole training job on the real model -------------------------------------------


@pytest.mark.slow
def test_trained_sae_reloads_with_saelens(small_sae_dir: Path, small_train_config) -> None:
    from sae_lens import SAE

    assert {p.name for p in small_sae_dir.iterdir()} >= {
        "cfg.json",
        "sae_weights.safetensors",
        "metrics.json",
        "feature_data.jsonl",
        "saeflow_sae.json",
    }
    sae = SAE.load_from_disk(str(small_sae_dir))
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (576, 1152)
    description = json.loads((small_sae_dir / "saeflow_sae.json").read_text())
    assert "saelens" not in description  # that key marks references to registry SAEs
    assert description["model"] == "smollm2-135m-instruct"
    assert description["hook"] == "blocks.15.hook_resid_post"
    assert description["options"] == small_train_config.to_dict()
    assert description["versions"]["sae-lens"]


@pytest.mark.slow
def test_metrics_are_complete_and_measured_on_heldout_text(
    small_sae_dir: Path, small_train_config, default_model
) -> None:
    metrics = json.loads((small_sae_dir / "metrics.json").read_text())
    expected = {
        "explained_variance",
        "mse",
        "l0",
        "dead_fraction",
        "never_fired_fraction",
        "ce_loss_clean",
        "ce_loss_spliced",
        "ce_loss_zero_ablated",
        "ce_loss_recovered",
        "training_tokens",
        "eval_tokens",
        "train_seconds",
        "tokens_per_s",
        "d_in",
        "d_sae",
        "architecture",
    }
    assert expected <= set(metrics)
    assert all(math.isfinite(metrics[k]) for k in expected - {"architecture"})
    assert metrics["l0"] == pytest.approx(16, abs=0.01)  # TopK k=16
    assert metrics["training_tokens"] >= small_train_config.training_tokens
    assert 0 <= metrics["dead_fraction"] <= 1 and 0 <= metrics["never_fired_fraction"] <= 1
    # Even a tiny SAE beats zero-ablation by far, and cannot beat the clean model by much.
    assert metrics["ce_loss_clean"] < metrics["ce_loss_spliced"] < metrics["ce_loss_zero_ablated"]
    assert metrics["explained_variance"] > 0.2  # ~0.36 after this tiny run; 0 = the mean
    assert metrics["ce_loss_recovered"] > 0.5
    # The evaluation used exactly the held-out windows.
    heldout = collect_windows(
        small_train_config.corpus,
        default_model.tokenizer,
        context_size=small_train_config.context_size,
        n_tokens=small_train_config.eval_tokens,
        split="heldout",
        seed=small_train_config.seed,
        repeat=False,
    )
    assert metrics["eval_tokens"] == heldout.n_tokens


@pytest.mark.slow
def test_feature_data_has_one_wellformed_record_per_feature(small_sae_dir: Path) -> None:
    metrics = json.loads((small_sae_dir / "metrics.json").read_text())
    lines = (small_sae_dir / "feature_data.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == list(range(metrics["d_sae"]))
    # density counts content positions (not the first real token), dead_fraction all of them
    active = [r for r in records if r["density"] > 0 or r["first_token"]["first_fires"] > 0]
    assert len(active) / len(records) == pytest.approx(1 - metrics["dead_fraction"], abs=1e-6)
    n_first = records[0]["first_token"]["n_texts"]
    first_fires = sum(r["first_token"]["first_fires"] for r in records)
    content_fires = metrics["l0"] * metrics["eval_tokens"] - first_fires
    content_positions = metrics["eval_tokens"] - n_first
    assert sum(r["density"] for r in records) == pytest.approx(
        content_fires / content_positions, rel=1e-6
    )
    for record in records:
        assert len(record["promoted_tokens"]) == len(record["suppressed_tokens"]) == 10
        assert record["promoted_tokens"][0]["logit"] >= record["suppressed_tokens"][0]["logit"]
        assert len(record["histogram"]["edges"]) == len(record["histogram"]["counts"]) + 1
    defaults = FeatureDataOptions()
    # Examples come from content positions only, so a feature that fires only on the first
    # real token has none.
    for record in [r for r in active if r["density"] > 0][:200]:
        tops = record["top_examples"]
        assert tops and len(tops) <= defaults.n_top
        assert len(record["random_examples"]) <= defaults.n_random
        assert tops[0]["max"] == pytest.approx(record["max_activation"], abs=1e-3)
        assert [ex["max"] for ex in tops] == sorted((ex["max"] for ex in tops), reverse=True)
        for example in tops + record["random_examples"]:
            assert len(example["tokens"]) == len(example["activations"]) > 0
            assert max(example["activations"]) == pytest.approx(example["max"], abs=1e-3)
            assert "<|im_start|>" not in example["tokens"]  # position 0 is never shown
        assert sum(record["histogram"]["counts"]) > 0


_TRAIN_SCRIPT = """
import json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from gpu_worker.config import TrainConfig
from gpu_worker.models import load_language_model
from gpu_worker.stopping import TrainingInterrupted
from gpu_worker.training import run_training

base, cache, slow = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "slow"
config = TrainConfig.from_hyperparameters(json.loads(sys.argv[4]))
model = load_language_model("default", cache_dir=cache)

def progress(stage, done, total):
    print(stage, done, total, flush=True)
    if slow and stage == "training":
        time.sleep(2)  # leaves the test time to signal mid-training

try:
    metrics = run_training(config, model=model, corpus_dir=None, output_dir=base / "model",
                           checkpoint_dir=base / "checkpoints", cache_dir=cache,
                           progress=progress, checkpoint_every_steps=2)
except TrainingInterrupted as exc:
    print("INTERRUPTED", exc, flush=True)
    sys.exit(3)
print("DONE", json.dumps(metrics), flush=True)
"""


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_next_run_resumes(
    tmp_path: Path, worker_cache_dir: Path, default_model
) -> None:
    del default_model  # only makes sure the model cache exists before the subprocesses
    hyperparameters = json.dumps(
        {
            "expansion_factor": "1",
            "k": "8",
            "training_tokens": "6144",
            "batch_size_tokens": "256",
            "context_size": "32",
            "eval_tokens": "64",
        }
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", _TRAIN_SCRIPT, str(tmp_path), str(worker_cache_dir)]
    process = subprocess.Popen(
        [*command, "slow", hyperparameters],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    for line in process.stdout:
        if line.startswith("training"):
            process.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "training never started"
    output, errors = process.communicate(timeout=120)
    assert process.returncode == 3, errors[-3000:]
    assert "INTERRUPTED SIGTERM" in output
    markers = list((tmp_path / "checkpoints").glob("step-*/saeflow_checkpoint.json"))
    assert markers, "no checkpoint written"
    stopped_at = max(json.loads(m.read_text())["samples"] for m in markers)
    assert 0 < stopped_at < 6144

    resumed = subprocess.run(
        [*command, "fast", hyperparameters],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at {stopped_at} tokens" in resumed.stderr  # "resuming from ... at N tokens"
    metrics = json.loads(resumed.stdout.split("DONE ", 1)[1])
    assert metrics["training_tokens"] >= 6144
    assert (tmp_path / "model" / "sae_weights.safetensors").exists()


def test_feature_data_selection_on_known_activations() -> None:
    from types import SimpleNamespace

    from gpu_worker.corpus import TokenWindows
    from gpu_worker.evaluation import FeatureActivations
    from gpu_worker.feature_data import FeatureDataOptions, build_feature_data

    tokens = torch.arange(40).view(4, 10)
    windows = TokenWindows(tokens=tokens, mask=torch.ones(4, 10, dtype=torch.bool))
    # feature 0 fires in windows 0 (twice), 1 and 3; feature 1 once; feature 2 never.
    row = torch.tensor([0, 0, 1, 3, 2])
    pos = torch.tensor([2, 8, 5, 9, 1])
    feature = torch.tensor([0, 0, 0, 0, 1])
    value = torch.tensor([1.0, 3.0, 2.0, 0.5, 4.0])
    acts = FeatureActivations.from_entries(windows, row, pos, feature, value, d_sae=3)
    sae = SimpleNamespace(cfg=SimpleNamespace(d_sae=3), W_dec=torch.eye(3, 4))
    model = SimpleNamespace(
        W_U=torch.eye(4, 12),
        tokenizer=SimpleNamespace(decode=lambda ids: f"t{ids[0]}"),
    )
    options = FeatureDataOptions(n_top=2, n_random=3, tokens_before=2, tokens_after=1, bins=4)
    records = list(build_feature_data(acts, sae, model, options))

    first = records[0]
    assert first["density"] == pytest.approx(4 / 36)  # 40 positions, 4 of them position 1
    assert first["max_activation"] == 3.0
    # One example per window, strongest first: window 0 (3.0 at pos 8), then window 1 (2.0).
    assert [ex["max"] for ex in first["top_examples"]] == [3.0, 2.0]
    assert first["top_examples"][0]["tokens"] == ["t6", "t7", "t8", "t9"]
    assert first["top_examples"][0]["activations"] == [0.0, 0.0, 3.0, 0.0]
    assert len(first["random_examples"]) == 3
    for example in first["random_examples"]:
        assert example["max"] == max(example["activations"]) > 0
        assert "t0" not in example["tokens"]  # position 0 is never shown
    assert sum(first["histogram"]["counts"]) == 4
    assert first["histogram"]["edges"][-1] == 3.0
    assert first["promoted_tokens"][0]["token"] == "t0"  # W_dec[0] @ W_U = e0
    # Feature 1 fires only on the first real token (position 1): it is counted there, never
    # shown as an example, and has no content density.
    assert records[1]["top_examples"] == records[1]["random_examples"] == []
    assert records[1]["density"] == 0 and records[1]["first_token"]["first_fires"] == 1
    assert records[2]["density"] == 0 and records[2]["top_examples"] == []
    assert sum(records[2]["histogram"]["counts"]) == 0


def test_hf_corpus_without_the_hub_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(CorpusUnavailable, match="need hub access"):
        next(iter_documents("hf:Skylion007/openwebtext"))
    assert time.perf_counter() - started < 30


@pytest.mark.gpu
def test_cuda_training_runs_the_lm_in_bf16_and_learns(
    worker_cache_dir: Path, tmp_path: Path
) -> None:
    """On a GPU: the LM under bf16 autocast, SAE steps under SAELens's autocast, and the
    result still reconstructs the fp32 activations it is evaluated on."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from gpu_worker.models import load_language_model
    from gpu_worker.training import run_training

    model = load_language_model("default", cache_dir=worker_cache_dir, device="cuda")
    config = TrainConfig.from_hyperparameters(
        {"training_tokens": "40960", "eval_tokens": "2048", "device": "cuda"}
    )
    metrics = run_training(
        config,
        model=model,
        corpus_dir=None,
        output_dir=tmp_path / "model",
        checkpoint_dir=tmp_path / "checkpoints",
        cache_dir=worker_cache_dir,
    )
    assert metrics["explained_variance"] > 0.5, metrics
    assert metrics["ce_loss_recovered"] > 0.8, metrics
