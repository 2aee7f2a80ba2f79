import pytest

from saeflow.core.errors import InvalidHook
from saeflow.core.hooks import SITES, HookPoint


def test_parse_and_name_round_trip():
    hook = HookPoint.parse("blocks.15.hook_resid_post")
    assert hook == HookPoint(15, "resid_post")
    assert hook.name == "blocks.15.hook_resid_post"
    assert hook.stop_at_layer == 16


@pytest.mark.parametrize("site", SITES)
def test_every_site_round_trips(site):
    hook = HookPoint.from_layer_site(3, site)
    assert HookPoint.parse(hook.name) == hook


@pytest.mark.parametrize(
    "name",
    [
        "blocks.x.hook_resid_post",
        "blocks.1.hook_resid",
        "blocks.-1.hook_resid_post",
        "layer15",
        "blocks.1.hook_mlp_out.extra",
        "",
        "blocks.1.attn.hook_z",
    ],
)
def test_bad_names_list_the_allowed_forms(name):
    with pytest.raises(InvalidHook) as info:
        HookPoint.parse(name)
    assert "blocks.<layer>.hook_<site>" in info.value.message
    assert "resid_post" in info.value.message


def test_non_string_is_rejected():
    with pytest.raises(InvalidHook):
        HookPoint.parse(15)  # type: ignore[arg-type]


def test_layer_and_site_are_validated_when_built_from_parts():
    with pytest.raises(InvalidHook):
        HookPoint.from_layer_site(-1, "resid_post")
    with pytest.raises(InvalidHook):
        HookPoint.from_layer_site(True, "resid_post")  # type: ignore[arg-type]
    with pytest.raises(InvalidHook):
        HookPoint.from_layer_site(1, "hook_resid_post")


def test_check_layers():
    hook = HookPoint.parse("blocks.29.hook_resid_post")
    assert hook.check_layers(30) is hook
    with pytest.raises(InvalidHook) as info:
        HookPoint.parse("blocks.30.hook_resid_post").check_layers(30)
    assert "30 layers" in info.value.message


def test_frozen():
    hook = HookPoint(1, "mlp_out")
    with pytest.raises(AttributeError):
        hook.layer = 2  # type: ignore[misc]
