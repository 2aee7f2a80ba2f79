"""The hook point: layer and site as ONE setting.

The seed notebook named its hook ``blocks.0.hook_mlp_out`` while believing it
trained on layer 20. Here the hook name is always derived from ``(layer, site)``
and parsed back into them, so the two can never disagree.

Contract:

- ``HookPoint.parse("blocks.15.hook_resid_post") == HookPoint(15, "resid_post")``
- ``HookPoint.from_layer_site(15, "resid_post")`` validates both parts.
- ``.name`` -> ``"blocks.15.hook_resid_post"`` (the TransformerLens hook name).
- ``.stop_at_layer`` -> ``layer + 1`` (a forward pass may stop right after the hook).
- ``.check_layers(n_layers)`` raises :class:`InvalidHook` when the layer does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saeflow.core.errors import InvalidHook

# TransformerLens hook names per site; attn_out / mlp_out live at the block level
# (blocks.L.hook_attn_out), like the residual-stream hooks.
SITES: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "mlp_out", "attn_out")

_HOOK_RE = re.compile(r"^blocks\.(\d{1,4})\.hook_([a-z_]+)$")

ALLOWED_FORMS = "blocks.<layer>.hook_<site> with <site> one of " + ", ".join(SITES)


@dataclass(frozen=True)
class HookPoint:
    """A validated hook: a non-negative layer index and a site name."""

    layer: int
    site: str

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise InvalidHook(f"hook layer must be an integer >= 0, got {self.layer!r}")
        if self.site not in SITES:
            raise InvalidHook(f"unknown hook site {self.site!r}; expected {ALLOWED_FORMS}")

    @classmethod
    def parse(cls, name: str) -> HookPoint:
        """Parse a TransformerLens hook name such as ``blocks.15.hook_resid_post``."""
        if not isinstance(name, str):
            raise InvalidHook(f"hook must be a string, got {type(name).__name__}")
        match = _HOOK_RE.match(name.strip())
        if match is None:
            raise InvalidHook(f"invalid hook {name!r}; expected {ALLOWED_FORMS}")
        return cls(layer=int(match.group(1)), site=match.group(2))

    @classmethod
    def from_layer_site(cls, layer: int, site: str) -> HookPoint:
        """Build from parts (validated like :meth:`parse`)."""
        return cls(layer=layer, site=site)

    @property
    def name(self) -> str:
        """The TransformerLens hook name, e.g. ``blocks.15.hook_resid_post``."""
        return f"blocks.{self.layer}.hook_{self.site}"

    @property
    def stop_at_layer(self) -> int:
        """The ``stop_at_layer`` for a forward pass that only needs this hook."""
        return self.layer + 1

    def check_layers(self, n_layers: int) -> HookPoint:
        """Raise :class:`InvalidHook` unless ``0 <= layer < n_layers``; return self."""
        if self.layer >= n_layers:
            raise InvalidHook(
                f"hook {self.name} names layer {self.layer}, but the model has "
                f"{n_layers} layers (0..{n_layers - 1})"
            )
        return self

    def __str__(self) -> str:
        return self.name
