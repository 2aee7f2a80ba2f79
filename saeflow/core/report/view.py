"""What the report templates show that takes more than a lookup: token colours, hover
titles, histogram bars. Plain data out; the templates do all markup and escaping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TITLE_FEATURES = 3


def _alpha(activation: float, top: float) -> float:
    return 0.0 if top <= 0 else max(0.0, min(1.0, activation / top))


def _feature_line(feature: Mapping[str, Any], labels: Mapping[int, str]) -> str:
    fid = int(feature["id"])
    parts = (f"#{fid}", labels.get(fid) or "", f"= {float(feature['activation']):.4g}")
    return " ".join(part for part in parts if part)


def token_view(
    text: str,
    activation: float,
    top: float,
    feats: Sequence[Mapping[str, Any]] = (),
    labels: Mapping[int, str] | None = None,
) -> dict[str, str]:
    """One token: ``text``, ``alpha`` ("" when uncoloured), ``feats`` (id:act|...), ``title``."""
    alpha = _alpha(activation, top)
    view = {"text": text, "alpha": f"{alpha:.2f}" if alpha > 0 else "", "feats": "", "title": ""}
    if feats:
        view["feats"] = "|".join(f"{int(f['id'])}:{float(f['activation']):.4g}" for f in feats)
        # The hover text names the strongest few; the click panel lists them all. This
        # keeps pages of many long prompts from growing by a label per feature per token.
        strongest = sorted(feats, key=lambda f: -float(f["activation"]))[:TITLE_FEATURES]
        view["title"] = "\n".join(_feature_line(f, labels or {}) for f in strongest)
    return view


def prompt_tokens(
    prompt: Mapping[str, Any], feature_max: Mapping[int, float], labels: Mapping[int, str]
) -> list[dict[str, str]]:
    """A prompt's tokens, each coloured by its strongest activation relative to that
    feature's maximum. Only the report's top features colour a token: dense, always-on
    features would paint everything."""
    views = []
    for tok in prompt.get("tokens") or []:
        feats = tok.get("features") or []
        best, top = 0.0, 0.0
        for f in feats:
            fmax = feature_max.get(int(f["id"]))
            if fmax and float(f["activation"]) / fmax > (best / top if top else 0.0):
                best, top = float(f["activation"]), fmax
        views.append(token_view(tok.get("text", ""), best, top, feats, labels))
    return views


def example_tokens(example: Mapping[str, Any]) -> list[dict[str, str]]:
    """An example window's tokens, coloured relative to the window's own maximum."""
    tokens = example.get("tokens") or []
    acts = list(example.get("activations") or []) + [0.0] * len(tokens)
    top = max([float(a) for a in acts] + [0.0])
    return [token_view(t, float(a), top) for t, a in zip(tokens, acts, strict=False)]


def histogram_view(
    hist: Mapping[str, Any] | None, width: int = 320, height: int = 80
) -> dict[str, Any] | None:
    """SVG geometry of an activation histogram, or None when there is none to draw."""
    if not hist or not hist.get("counts"):
        return None
    counts = [float(c) for c in hist["counts"]]
    edges = [float(e) for e in hist.get("edges", [])]
    peak = max(counts) or 1.0
    step = width / len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = 0.0 if count <= 0 else max(1.0, (height - 12) * count / peak)
        lo = edges[i] if i < len(edges) else i
        hi = edges[i + 1] if i + 1 < len(edges) else i + 1
        bars.append(
            {
                "x": f"{i * step:.2f}",
                "y": f"{height - 12 - h:.2f}",
                "w": f"{max(step - 1, 0.5):.2f}",
                "h": f"{h:.2f}",
                "title": f"{lo:.3g}–{hi:.3g}: {int(count)}",
            }
        )
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "lo": f"{edges[0]:.3g}" if edges else "0",
        "hi": f"{edges[-1]:.3g}" if edges else "",
    }
