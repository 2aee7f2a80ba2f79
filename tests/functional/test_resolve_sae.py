import dataclasses
import hashlib

import pytest

from saeflow.core import layout
from saeflow.core.errors import SaeNotFound
from saeflow.core.options import CE_ON_PROMPTS_AUTO_MAX, RunOptions
from saeflow.steps import resolve_sae
from saeflow.steps.resolve_sae import ResolveSaeSettings

RUN_ID = "demo-0123456789ab"


def state(options: dict, n_prompts: int = 3, n_contrast_prompts: int = 0) -> dict:
    return {
        "run_id": RUN_ID,
        "run": {
            "run_id": RUN_ID,
            "options": RunOptions.from_dict(options).to_dict(),
            "n_prompts": n_prompts,
            "n_contrast_prompts": n_contrast_prompts,
        },
    }


def test_train_when_no_sae_is_stored(store):
    piece = resolve_sae.run(state({"train": {"k": 16}}), store=store, settings=ResolveSaeSettings())
    opts = RunOptions.from_dict({"train": {"k": 16}})
    hash_ = layout.sae_hash(opts.model, opts.hook, dataclasses.asdict(opts.train))
    assert piece["mode"] == "train"
    assert (
        piece["uri"]
        == f"s3://{store.bucket}/saes/smollm2-135m-instruct/blocks.15.hook_resid_post/{hash_}/"
    )
    assert piece["sae_id"] == f"saes/smollm2-135m-instruct/blocks.15.hook_resid_post/{hash_}"
    training = piece["training"]
    assert training["hyperparameters"]["k"] == "16"
    assert training["hyperparameters"]["hook"] == "blocks.15.hook_resid_post"
    assert all(isinstance(v, str) for v in training["hyperparameters"].values())
    assert training["output_path"] == f"s3://{store.bucket}/runs/{RUN_ID}/train/"
    assert training["checkpoint_uri"] == f"s3://{store.bucket}/runs/{RUN_ID}/checkpoints/"
    assert training["input_data_config"] == []
    assert piece["serve_environment"] == {
        "SAEFLOW_MODEL": "smollm2-135m-instruct",
        "SAEFLOW_HOOK": "blocks.15.hook_resid_post",
        "SAEFLOW_TOP_K": "8",
        "SAEFLOW_MAX_PROMPT_TOKENS": "512",
        "SAEFLOW_CE_LOSS": "1",
    }


@pytest.mark.parametrize(
    ("ce_option", "n_prompts", "n_contrast_prompts", "expected"),
    [
        ("auto", CE_ON_PROMPTS_AUTO_MAX, 0, "1"),
        # main and contrast sets count together
        ("auto", CE_ON_PROMPTS_AUTO_MAX - 5, 6, "0"),
        (True, CE_ON_PROMPTS_AUTO_MAX * 10, 0, "1"),
        (False, 3, 0, "0"),
    ],
)
def test_ce_loss_on_prompts_reaches_the_serve_environment(
    store, ce_option, n_prompts, n_contrast_prompts, expected
):
    piece = resolve_sae.run(
        state({"ce_loss_on_prompts": ce_option}, n_prompts, n_contrast_prompts),
        store=store,
        settings=ResolveSaeSettings(),
    )
    assert piece["serve_environment"]["SAEFLOW_CE_LOSS"] == expected


def test_cached_once_metrics_exist(store):
    first = resolve_sae.run(state({}), store=store, settings=ResolveSaeSettings())
    _, prefix = layout.parse_s3_uri(first["uri"])
    assert first["weights_sha256"] is None  # register_sae hashes what it registers
    store.put_bytes(prefix + "cfg.json", b"{}")
    store.put_bytes(prefix + "sae_weights.safetensors", b"weights-v1")
    # Weights without metrics.json = an interrupted registration: still train.
    assert resolve_sae.run(state({}), store=store, settings=ResolveSaeSettings())["mode"] == "train"
    store.put_json(prefix + "metrics.json", {"explained_variance": 0.8})
    cached = resolve_sae.run(state({}), store=store, settings=ResolveSaeSettings())
    assert cached["mode"] == "cached"
    assert cached["uri"] == first["uri"]
    assert cached["training"] is None
    # No weights.sha256 (registered before it existed): the weights are hashed here.
    assert cached["weights_sha256"] == hashlib.sha256(b"weights-v1").hexdigest()
    store.put_bytes(prefix + "weights.sha256", ("ab" * 32).encode())
    recorded = resolve_sae.run(state({}), store=store, settings=ResolveSaeSettings())
    assert recorded["weights_sha256"] == "ab" * 32
    # Another training option is another SAE.
    other = resolve_sae.run(
        state({"train": {"seed": 1}}), store=store, settings=ResolveSaeSettings()
    )
    assert other["mode"] == "train"
    assert other["uri"] != first["uri"]


def test_s3_corpus_becomes_a_channel(store):
    piece = resolve_sae.run(
        state({"train": {"corpus": "s3://corpora/web/"}}),
        store=store,
        settings=ResolveSaeSettings(),
    )
    training = piece["training"]
    assert training["hyperparameters"]["corpus"] == "channel:corpus"
    assert training["input_data_config"] == [
        {
            "ChannelName": "corpus",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": "s3://corpora/web/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
    ]


def test_saelens_reference(store):
    sae = "saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
    piece = resolve_sae.run(
        state(
            {
                "sae": sae,
                "model": "google/gemma-2-2b",
                "hook": "blocks.20.hook_resid_post",
                "features_per_token": 5,
            }
        ),
        store=store,
        settings=ResolveSaeSettings(max_prompt_tokens=128),
    )
    assert piece["mode"] == "pretrained"
    assert piece["sae_id"] == sae
    assert piece["uri"] == f"s3://{store.bucket}/runs/{RUN_ID}/sae-ref/"
    assert piece["training"] is None
    assert store.get_json(layout.sae_ref_key(RUN_ID)) == {
        "source": "saelens",
        "release": "gemma-scope-2b-pt-res-canonical",
        "sae_id": "layer_20/width_16k/canonical",
        "model": "google/gemma-2-2b",
        "hook": "blocks.20.hook_resid_post",
    }
    assert piece["serve_environment"]["SAEFLOW_TOP_K"] == "5"
    assert piece["serve_environment"]["SAEFLOW_MAX_PROMPT_TOKENS"] == "128"
    # The worker downloads the weights: the release name stands for them, and says so.
    assert piece["weights_sha256"] == hashlib.sha256(sae.encode()).hexdigest()
    assert "release name" in piece["weights_sha256_basis"]


def test_s3_directory(store, s3_client):
    s3_client.create_bucket(Bucket="shared-saes")
    store.for_bucket("shared-saes").put_bytes("team/sae1/cfg.json", b"{}")
    weights = bytes(range(256)) * 40_000  # 10 MB: more than one read chunk
    store.for_bucket("shared-saes").put_bytes("team/sae1/sae_weights.safetensors", weights)
    piece = resolve_sae.run(
        state({"sae": "s3://shared-saes/team/sae1"}), store=store, settings=ResolveSaeSettings()
    )
    assert piece["mode"] == "pretrained"
    assert piece["uri"] == "s3://shared-saes/team/sae1/"
    assert piece["sae_id"] == "s3://shared-saes/team/sae1"
    assert piece["weights_sha256"] == hashlib.sha256(weights).hexdigest()


def test_s3_directory_without_weights_is_not_an_sae(store):
    store.put_bytes("elsewhere/sae/cfg.json", b"{}")
    with pytest.raises(SaeNotFound, match=r"sae_weights\.safetensors"):
        resolve_sae.run(
            state({"sae": f"s3://{store.bucket}/elsewhere/sae"}),
            store=store,
            settings=ResolveSaeSettings(),
        )


def test_s3_directory_in_own_saes_uses_the_registry_id(store):
    store.put_bytes("saes/m/blocks.1.hook_resid_post/abc/cfg.json", b"{}")
    store.put_bytes("saes/m/blocks.1.hook_resid_post/abc/sae_weights.safetensors", b"w")
    sae = f"s3://{store.bucket}/saes/m/blocks.1.hook_resid_post/abc/"
    piece = resolve_sae.run(state({"sae": sae}), store=store, settings=ResolveSaeSettings())
    assert piece["sae_id"] == "saes/m/blocks.1.hook_resid_post/abc"


@pytest.mark.parametrize("sae", ["s3://saeflow-test/nothing/here", "s3://no-such-bucket/x"])
def test_missing_s3_directory(store, sae):
    with pytest.raises(SaeNotFound) as info:
        resolve_sae.run(state({"sae": sae}), store=store, settings=ResolveSaeSettings())
    assert "nothing/here" in info.value.message or "no-such-bucket" in info.value.message
