import pytest

from saeflow.core.options import GateOptions
from saeflow.steps.register_sae import evaluate_gate, gate_failure_message

GOOD = {
    "explained_variance": 0.8,
    "dead_fraction": 0.1,
    "ce_loss_recovered": 0.95,
    "l0": 32.0,
    "d_sae": 4608,
}


def test_good_metrics_pass_default_gate():
    result = evaluate_gate(GOOD, GateOptions())
    assert result["passed"] is True
    assert {c["metric"] for c in result["checks"]} == {
        "explained_variance",
        "dead_fraction",
        "ce_loss_recovered",
        "l0",
    }
    upper = [c for c in result["checks"] if c["metric"] == "l0" and c["op"] == "<="]
    assert upper[0]["threshold"] == 2304  # d_sae / 2


@pytest.mark.parametrize(
    ("change", "metric"),
    [
        ({"explained_variance": 0.3}, "explained_variance"),
        ({"dead_fraction": 0.7}, "dead_fraction"),
        ({"ce_loss_recovered": 0.5}, "ce_loss_recovered"),
        ({"l0": 0.2}, "l0"),
        ({"l0": 3000}, "l0"),
        ({"ce_loss_recovered": float("nan")}, "ce_loss_recovered"),
        ({"explained_variance": None}, "explained_variance"),
    ],
)
def test_each_check_can_fail(change, metric):
    result = evaluate_gate({**GOOD, **change}, GateOptions())
    assert result["passed"] is False
    failing = [c for c in result["checks"] if not c["passed"]]
    assert [c["metric"] for c in failing] == [metric]
    assert metric in gate_failure_message(result)


def test_thresholds_are_options():
    strict = GateOptions(min_explained_variance=0.9, max_l0=16)
    result = evaluate_gate(GOOD, strict)
    message = gate_failure_message(result)
    assert "explained_variance 0.8 (needs >= 0.9)" in message
    assert "l0 32 (needs <= 16)" in message


def test_missing_d_sae_skips_the_upper_l0_bound():
    metrics = {k: v for k, v in GOOD.items() if k != "d_sae"}
    result = evaluate_gate(metrics, GateOptions())
    assert result["passed"] is True
    assert not [c for c in result["checks"] if c["op"] == "<=" and c["metric"] == "l0"]
