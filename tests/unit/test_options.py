import pytest

from saeflow.core.errors import InvalidHook, InvalidRunOptions
from saeflow.core.options import (
    DEFAULT_STEER_PROMPT,
    RunOptions,
    expand_dotted,
    merge_option_layers,
    parse_set_overrides,
    resolve_options,
    training_hyperparameters,
)


def test_defaults():
    opts = RunOptions.from_dict({})
    assert opts.model == "smollm2-135m-instruct"
    assert opts.hook == "blocks.15.hook_resid_post"
    assert opts.sae == "train"
    assert opts.train.architecture == "topk"
    assert opts.train.k == 32
    assert opts.top_k_features == 24
    assert opts.features_per_token == 8
    assert opts.label.backend == "auto"
    assert opts.steer == []
    assert opts.contrast is None
    assert opts.report_max_prompts == 200
    assert opts.hook_point.layer == 15


def test_round_trip_through_dict():
    opts = RunOptions.from_dict(
        {
            "model": "Qwen/Qwen2.5-0.5B",
            "hook": "blocks.3.hook_mlp_out",
            "sae": "saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical",
            "train": {"architecture": "jumprelu", "l1_coefficient": 2},
            "label": {"backend": "offline", "max_usd": 0, "model_id": "claude-haiku-4-5"},
            "steer": [{"feature": 7, "strengths": [40, -40], "prompts": ["Hi"]}],
            "contrast": "prompts/other.jsonl",
            "gate": {"max_l0": 64},
        }
    )
    assert RunOptions.from_dict(opts.to_dict()) == opts
    assert opts.train.l1_coefficient == 2.0
    assert isinstance(opts.train.l1_coefficient, float)
    assert opts.steer[0].strengths == [40.0, -40.0]


def test_default_alias_and_steer_defaults():
    opts = RunOptions.from_dict({"model": "default", "steer": [{"feature": 1, "strengths": [8]}]})
    assert opts.model == "smollm2-135m-instruct"
    request = opts.steer[0]
    assert request.prompts == [DEFAULT_STEER_PROMPT]
    assert (request.max_new_tokens, request.temperature, request.freq_penalty, request.seed) == (
        50,
        0.5,
        2.0,
        0,
    )


def test_integral_float_accepted_for_int():
    assert (
        RunOptions.from_dict({"train": {"training_tokens": 2e5}}).train.training_tokens == 200_000
    )


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"modle": "x"}, "unknown option modle"),
        ({"train": {"kk": 3}}, "unknown option train.kk"),
        ({"label": {"budget": 3}}, "unknown option label.budget"),
        ({"steer": [{"feature": 1, "strengths": [1], "strenght": 2}]}, "steer[0].strenght"),
        ({"gate": {"min_ev": 1}}, "gate.min_ev"),
    ],
)
def test_unknown_keys_are_rejected_by_name(data, needle):
    with pytest.raises(InvalidRunOptions) as info:
        RunOptions.from_dict(data)
    assert needle in info.value.message


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"top_k_features": "3"}, "top_k_features: must be an integer"),
        ({"top_k_features": 0}, "top_k_features"),
        ({"features_per_token": 2.5}, "features_per_token: must be an integer"),
        ({"train": {"k": 0}}, "train.k"),
        ({"train": {"architecture": "gated"}}, "train.architecture"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"expansion_factor": True}}, "train.expansion_factor"),
        ({"train": "big"}, "train: must be an object"),
        ({"label": {"backend": "gpt"}}, "label.backend"),
        ({"label": {"max_usd": -1}}, "label.max_usd"),
        ({"label": {"refresh": "yes"}}, "label.refresh"),
        ({"steer": {"feature": 1}}, 'steer: must be a list of requests or "auto"'),
        ({"steer": "some"}, 'steer: must be a list of requests or "auto"'),
        ({"ce_loss_on_prompts": "maybe"}, "ce_loss_on_prompts"),
        ({"steer": [{"strengths": [1]}]}, "steer[0].feature: required"),
        ({"steer": [{"feature": 1, "strengths": []}]}, "steer[0].strengths"),
        ({"steer": [{"feature": 1, "strengths": ["a"]}]}, "steer[0].strengths[0]"),
        ({"sae": "hub:foo"}, "sae"),
        ({"sae": "saelens:release-only"}, "sae"),
        ({"sae": "s3://bucket-only"}, "sae"),
        ({"model": ""}, "model"),
        ({"contrast": 3}, "contrast: must be a string"),
        ({"gate": {"min_l0": 5, "max_l0": 2}}, "gate.max_l0"),
        ({"report_max_prompts": None}, "report_max_prompts"),
    ],
)
def test_bad_values_name_the_option(data, needle):
    with pytest.raises(InvalidRunOptions) as info:
        RunOptions.from_dict(data)
    assert needle in info.value.message


def test_bad_hook_is_an_invalid_hook():
    with pytest.raises(InvalidHook):
        RunOptions.from_dict({"hook": "blocks.20"})


def test_parse_set_overrides():
    assert parse_set_overrides(
        [
            "train.k=16",
            "label.backend=offline",
            "train.lr=1e-3",
            "contrast=null",
            "steer=[]",
            "model=HuggingFaceTB/SmolLM2-135M",
        ]
    ) == {
        "train": {"k": 16, "lr": 0.001},
        "label": {"backend": "offline"},
        "contrast": None,
        "steer": [],
        "model": "HuggingFaceTB/SmolLM2-135M",
    }


def test_label_refresh_is_off_by_default_and_set_relabels():
    assert RunOptions().label.refresh is False
    opts = RunOptions.from_dict(parse_set_overrides(["label.refresh=true"]))
    assert opts.label.refresh is True
    assert RunOptions.from_dict(opts.to_dict()) == opts


@pytest.mark.parametrize("item", ["train.k", "=3", "train..k=3"])
def test_parse_set_overrides_rejects_malformed(item):
    with pytest.raises(InvalidRunOptions):
        parse_set_overrides([item])


def test_expand_dotted_merges_nested_and_dotted():
    assert expand_dotted({"train.k": 4, "train": {"seed": 1}, "label.backend": "none"}) == {
        "train": {"k": 4, "seed": 1},
        "label": {"backend": "none"},
    }


def test_layer_precedence_overrides_line_sidecar_defaults():
    sidecar = {"train": {"k": 8, "seed": 3}, "top_k_features": 5, "label": {"backend": "none"}}
    line = {"train": {"k": 12}, "top_k_features": 6}
    overrides = {"train.k": 16}
    merged = merge_option_layers(sidecar, line, overrides)
    assert merged == {
        "train": {"k": 16, "seed": 3},
        "top_k_features": 6,
        "label": {"backend": "none"},
    }
    opts = resolve_options(sidecar, line, overrides)
    assert (opts.train.k, opts.train.seed, opts.top_k_features) == (16, 3, 6)
    assert opts.train.expansion_factor == 8  # default


def test_lists_replace_rather_than_merge():
    sidecar = {"steer": [{"feature": 1, "strengths": [1]}, {"feature": 2, "strengths": [1]}]}
    opts = resolve_options(sidecar, {"steer": [{"feature": 9, "strengths": [2]}]})
    assert [r.feature for r in opts.steer] == [9]


def test_non_object_layer_is_rejected():
    with pytest.raises(InvalidRunOptions):
        merge_option_layers(["train"])  # type: ignore[arg-type]


def test_training_hyperparameters_are_strings_that_read_back():
    opts = RunOptions.from_dict({"train": {"lr": 3e-5, "k": 16}})
    hp = training_hyperparameters(opts)
    assert all(isinstance(v, str) for v in hp.values())
    assert float(hp["lr"]) == 3e-5
    assert int(hp["k"]) == 16
    assert hp["model"] == "smollm2-135m-instruct"
    assert hp["hook"] == "blocks.15.hook_resid_post"
    assert hp["device"] == "auto"
    assert set(hp) == {
        "model",
        "hook",
        "architecture",
        "expansion_factor",
        "k",
        "l1_coefficient",
        "lr",
        "training_tokens",
        "context_size",
        "batch_size_tokens",
        "eval_tokens",
        "corpus",
        "seed",
        "device",
    }
