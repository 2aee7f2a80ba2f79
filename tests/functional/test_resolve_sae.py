import hashlib
import json

import pytest
from fakes.hf_cache import add_sae_folder

from saeflow.adapters.sae_catalog import HubSaeCatalog, Release
from saeflow.core import layout
from saeflow.core.errors import ForbiddenInput, InvalidHook, InvalidRunOptions, SaeNotFound
from saeflow.core.options import CE_ON_PROMPTS_AUTO_MAX, RunOptions
from saeflow.steps import resolve_sae
from saeflow.steps.resolve_sae import ResolveSaeSettings

RUN_ID = "demo-0123456789ab"
HOOK = "blocks.15.hook_resid_post"


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
    settings = ResolveSaeSettings(max_training_seconds=7200)
    piece = resolve_sae.run(state({"train": {"k": 16}}), store=store, settings=settings)
    opts = RunOptions.from_dict({"train": {"k": 16}})
    hash_ = layout.sae_hash(opts.model, opts.hook, opts.train.model_dump())
    assert piece["mode"] == "train"
    assert piece["uri"] == f"s3://{store.bucket}/saes/smollm2-135m-instruct/{HOOK}/{hash_}/"
    assert piece["sae_id"] == f"saes/smollm2-135m-instruct/{HOOK}/{hash_}"
    training = piece["training"]
    assert training["hyperparameters"]["k"] == "16"
    assert training["hyperparameters"]["hook"] == HOOK
    assert all(isinstance(v, str) for v in training["hyperparameters"].values())
    assert training["output_path"] == f"s3://{store.bucket}/runs/{RUN_ID}/train/"
    # Per SAE, not per run: a retried run's training job resumes from the last checkpoint.
    assert training["checkpoint_uri"] == (
        f"s3://{store.bucket}/checkpoints/smollm2-135m-instruct/{HOOK}/{hash_}/"
    )
    assert training["input_data_config"] == []
    assert (training["max_runtime_s"], training["timeout_s"]) == (7200, 7200 + 3600)
    assert piece["serve_environment"] == {
        "SAEFLOW_MODEL": "smollm2-135m-instruct",
        "SAEFLOW_HOOK": HOOK,
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
    corpus = f"s3://{store.bucket}/corpora/web/"
    piece = resolve_sae.run(
        state({"train": {"corpus": corpus}}), store=store, settings=ResolveSaeSettings()
    )
    training = piece["training"]
    assert training["hyperparameters"]["corpus"] == "channel:corpus"
    assert training["input_data_config"] == [
        {
            "ChannelName": "corpus",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": corpus,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
    ]


# ---------------------------------------------------------------- saelens: references


def registry_catalog(**kwargs) -> HubSaeCatalog:
    release = Release(
        repo_id="google/gemma-scope-2b-pt-res",
        model="gemma-2-2b",
        saes={"layer_20/width_16k/canonical": "layer_20/width_16k/average_l0_71"},
    )
    return HubSaeCatalog(registry={"gemma-scope-2b-pt-res-canonical": release}, **kwargs)


def test_saelens_registry_reference(store):
    sae = "saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
    options = {
        "sae": sae,
        "model": "google/gemma-2-2b",
        "hook": "blocks.20.hook_resid_post",
        "features_per_token": 5,
    }
    piece = resolve_sae.run(
        state(options),
        store=store,
        settings=ResolveSaeSettings(max_prompt_tokens=128),
        catalog=registry_catalog(offline=False),
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


@pytest.mark.parametrize(
    ("sae", "needle"),
    [
        ("saelens:gemma-scope-2b-pt-res-canonical/layer_99/none", "has no SAE"),
        ("saelens:no-such-release/some-id", "no release 'no-such-release'"),
        ("saelens:nobody/no-repo/blocks.1.hook_resid_post", "not in the local Hugging Face cache"),
    ],
)
def test_unknown_pretrained_saes_are_sae_not_found(store, tmp_path, sae, needle):
    catalog = registry_catalog(offline=True, cache_dir=str(tmp_path))
    with pytest.raises(SaeNotFound, match=needle):
        resolve_sae.run(
            state({"sae": sae}), store=store, settings=ResolveSaeSettings(), catalog=catalog
        )
    assert not store.exists(layout.sae_ref_key(RUN_ID))


def test_a_hugging_face_repo_release_is_read_from_the_cache(store, tmp_path):
    sae_dir = tmp_path / "sae"
    sae_dir.mkdir()
    (sae_dir / "cfg.json").write_text(json.dumps({"d_sae": 64, "metadata": {"hook_name": HOOK}}))
    (sae_dir / "sae_weights.safetensors").write_bytes(b"weights")
    add_sae_folder(tmp_path / "hub", "saeflow-test/tiny", HOOK, sae_dir)
    catalog = HubSaeCatalog(offline=True, cache_dir=str(tmp_path / "hub"), registry={})
    sae = f"saelens:saeflow-test/tiny/{HOOK}"
    piece = resolve_sae.run(
        state({"sae": sae}), store=store, settings=ResolveSaeSettings(), catalog=catalog
    )
    reference = store.get_json(layout.sae_ref_key(RUN_ID))
    assert (reference["release"], reference["sae_id"]) == ("saeflow-test/tiny", HOOK)
    assert piece["sae_id"] == sae
    assert piece["weights_sha256"] == hashlib.sha256(sae.encode()).hexdigest()
    # Its cfg.json is checked against the run before any GPU work: hook and width.
    with pytest.raises(InvalidHook, match=r"set hook=blocks\.15\.hook_resid_post"):
        resolve_sae.run(
            state({"sae": sae, "hook": "blocks.3.hook_resid_post"}),
            store=store,
            settings=ResolveSaeSettings(),
            catalog=catalog,
        )
    with pytest.raises(InvalidRunOptions, match=r"steer\[0\].feature: 64 does not exist"):
        resolve_sae.run(
            state({"sae": sae, "steer": [{"feature": 64, "strengths": [1]}]}),
            store=store,
            settings=ResolveSaeSettings(),
            catalog=catalog,
        )


# ---------------------------------------------------------------- s3:// directories


def test_s3_directory_in_own_saes_uses_the_registry_id(store):
    store.put_json(f"saes/m/{HOOK}/abc/cfg.json", {"d_sae": 100, "hook_name": HOOK})
    weights = bytes(range(256)) * 40_000  # 10 MB: more than one read chunk
    store.put_bytes(f"saes/m/{HOOK}/abc/sae_weights.safetensors", weights)
    sae = f"s3://{store.bucket}/saes/m/{HOOK}/abc/"
    piece = resolve_sae.run(state({"sae": sae}), store=store, settings=ResolveSaeSettings())
    assert piece["mode"] == "pretrained"
    assert piece["uri"] == sae
    assert piece["sae_id"] == f"saes/m/{HOOK}/abc"
    # No weights.sha256 beside them (not registered by saeflow): the weights are hashed.
    assert piece["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    with pytest.raises(InvalidHook, match=r"trained on blocks\.15"):
        resolve_sae.run(
            state({"sae": sae, "hook": "blocks.2.hook_mlp_out"}),
            store=store,
            settings=ResolveSaeSettings(),
        )


def test_missing_s3_directory(store):
    with pytest.raises(SaeNotFound, match="saes/nothing/here"):
        resolve_sae.run(
            state({"sae": f"s3://{store.bucket}/saes/nothing/here"}),
            store=store,
            settings=ResolveSaeSettings(),
        )


def test_s3_directory_without_weights_is_not_an_sae(store):
    store.put_json(f"saes/other/{HOOK}/cfg.json", {"d_sae": 100, "hook_name": HOOK})
    with pytest.raises(SaeNotFound, match=r"sae_weights\.safetensors"):
        resolve_sae.run(
            state({"sae": f"s3://{store.bucket}/saes/other/{HOOK}"}),
            store=store,
            settings=ResolveSaeSettings(),
        )


@pytest.mark.parametrize("sae", ["s3://shared-saes/team/sae1", "s3://saeflow-test/runs/x/"])
def test_an_sae_outside_saes_is_forbidden(store, sae):
    with pytest.raises(ForbiddenInput):
        resolve_sae.run(state({"sae": sae}), store=store, settings=ResolveSaeSettings())


# ---------------------------------------------------------------- the hub, over real HTTP


class FakeHub:
    """The hub's resolve endpoint: one repo with one SAE folder, one gated repo."""

    def __init__(self) -> None:
        import http.server
        import threading

        hub = self
        self.authorizations: list[str | None] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                hub.authorizations.append(self.headers.get("Authorization"))
                if self.path == f"/saeflow-test/tiny/resolve/main/{HOOK}/cfg.json":
                    body = json.dumps({"d_sae": 32, "metadata": {"hook_name": HOOK}}).encode()
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(body)
                    return
                gated = self.path.startswith("/google/gated/")
                self.send_response(401 if gated or "/nobody/" in self.path else 404)
                self.send_header("X-Error-Code", "GatedRepo" if gated else "RepoNotFound")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def hub():
    fake = FakeHub()
    yield fake
    fake.close()


def test_online_the_hub_is_asked_with_the_deployments_token(hub):
    catalog = HubSaeCatalog(offline=False, token="hf_secret", registry={}, endpoint=hub.url)
    found = catalog.locate(f"saeflow-test/tiny/{HOOK}")
    assert (found.repo_id, found.folder, found.config["d_sae"]) == ("saeflow-test/tiny", HOOK, 32)
    assert hub.authorizations == ["Bearer hf_secret"]
    with pytest.raises(SaeNotFound, match="does not exist on the hub"):
        catalog.locate(f"saeflow-test/tiny/{HOOK.replace('15', '3')}")
    with pytest.raises(SaeNotFound, match="does not exist on the hub"):
        catalog.locate("nobody/nothing/x")
    # A gated repo exists: the worker, with its token, decides.
    assert catalog.locate("google/gated/layer_1").config is None


def test_an_unreachable_hub_leaves_the_check_to_the_worker():
    catalog = HubSaeCatalog(offline=False, registry={}, endpoint="http://127.0.0.1:9")
    assert catalog.locate(f"saeflow-test/tiny/{HOOK}").config is None


def test_offline_a_registry_sae_must_be_in_the_cache(store, tmp_path):
    sae = "saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
    catalog = registry_catalog(offline=True, cache_dir=str(tmp_path / "hub"))
    options = {"sae": sae, "hook": "blocks.20.hook_resid_post"}
    with pytest.raises(SaeNotFound, match="not in the local Hugging Face cache"):
        resolve_sae.run(state(options), store=store, settings=ResolveSaeSettings(), catalog=catalog)
    # Gemma Scope folders hold params.npz (SAELens converts them): any cached file will do.
    folder = tmp_path / "npz"
    folder.mkdir()
    (folder / "params.npz").write_bytes(b"npz")
    add_sae_folder(
        tmp_path / "hub", "google/gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71", folder
    )
    piece = resolve_sae.run(
        state(options), store=store, settings=ResolveSaeSettings(), catalog=catalog
    )
    assert piece["sae_id"] == sae
