"""Render report.json as ONE self-contained index.html (inline CSS/JS, opens offline).

Everything is rendered on the server side with :func:`html.escape`, so the page reads
without JavaScript; the small inline script only adds interaction (click a token to
pin its top features, recolour the prompts by one feature). Data the script needs is
embedded as JSON in a ``<script type="application/json">`` block, escaped so that no
``</script>`` or ``<!--`` in user text can end it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from saeflow.core.report.assets import PAGE_CSS, PAGE_JS

TITLE_FEATURES = 3


def esc(value: Any) -> str:
    """Escape any value for HTML text and attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def script_json(value: Any) -> str:
    """JSON safe inside <script>: no '<', '>', '&' or line separators appear raw."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e6 else f"{value:.3e}"
    return esc(value)


def pct(value: Any) -> str:
    return "–" if not isinstance(value, int | float) else f"{100 * value:.2f}%"


def _alpha(activation: float, top: float) -> float:
    return 0.0 if top <= 0 else max(0.0, min(1.0, activation / top))


def token_span(
    text: str,
    activation: float,
    top: float,
    feats: Sequence[Mapping[str, Any]] = (),
    labels: Mapping[int, str] | None = None,
) -> str:
    """One token, its background showing activation; its features in data/title attributes."""
    labels = labels or {}
    alpha = _alpha(activation, top)
    style = f' style="background:rgba(255,112,0,{alpha:.2f})"' if alpha > 0 else ""
    attrs = ""
    if feats:
        data = "|".join(f"{int(f['id'])}:{float(f['activation']):.4g}" for f in feats)
        # The hover text names the strongest few; the click panel lists them all. This
        # keeps pages of many long prompts from growing by a label per feature per token.
        strongest = sorted(feats, key=lambda f: -float(f["activation"]))[:TITLE_FEATURES]
        title = "\n".join(
            " ".join(
                part
                for part in (
                    f"#{int(f['id'])}",
                    labels.get(int(f["id"])) or "",
                    f"= {float(f['activation']):.4g}",
                )
                if part
            )
            for f in strongest
        )
        attrs = f' data-feats="{esc(data)}" title="{esc(title)}" tabindex="0"'
    return f'<span class="tok"{style}{attrs}>{esc(text)}</span>'


def example_html(example: Mapping[str, Any]) -> str:
    tokens = example.get("tokens") or []
    acts = list(example.get("activations") or []) + [0.0] * len(tokens)
    top = max([float(a) for a in acts] + [0.0])
    spans = "".join(token_span(t, float(a), top) for t, a in zip(tokens, acts, strict=False))
    source = esc(example.get("source") or "")
    return (
        f'<div class="ex"><span class="exmeta">{source} · max {fmt(example.get("max"))}</span>'
        f'<span class="ctx">{spans}</span></div>'
    )


def histogram_svg(hist: Mapping[str, Any] | None, width: int = 320, height: int = 80) -> str:
    if not hist or not hist.get("counts"):
        return '<p class="muted">No activation histogram (the SAE has no feature data).</p>'
    counts = [float(c) for c in hist["counts"]]
    edges = [float(e) for e in hist.get("edges", [])]
    peak = max(counts) or 1.0
    bar = width / len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = 0.0 if count <= 0 else max(1.0, (height - 12) * count / peak)
        lo = edges[i] if i < len(edges) else i
        hi = edges[i + 1] if i + 1 < len(edges) else i + 1
        bars.append(
            f'<rect x="{i * bar:.2f}" y="{height - 12 - h:.2f}" width="{max(bar - 1, 0.5):.2f}" '
            f'height="{h:.2f}"><title>{esc(f"{lo:.3g}–{hi:.3g}: {int(count)}")}</title></rect>'
        )
    lo_label = f"{edges[0]:.3g}" if edges else "0"
    hi_label = f"{edges[-1]:.3g}" if edges else ""
    return (
        f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="activation histogram">{"".join(bars)}'
        f'<text x="0" y="{height - 1}">{esc(lo_label)}</text>'
        f'<text x="{width}" y="{height - 1}" text-anchor="end">{esc(hi_label)}</text></svg>'
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _label_cell(feature: Mapping[str, Any]) -> str:
    if feature.get("label"):
        return esc(feature["label"])
    reason = feature.get("score_reason") or "not labelled"
    return f'<span class="muted" title="{esc(reason)}">not labelled</span>'


def _score_cell(feature: Mapping[str, Any]) -> str:
    if feature.get("score") is None:
        reason = feature.get("score_reason") or "no score"
        return f'<span class="muted" title="{esc(reason)}">n/a</span>'
    return f'<span title="{esc(feature.get("score_method") or "")}">{feature["score"]:.2f}</span>'


# --- sections -----------------------------------------------------------------------


def section_run(report: Mapping[str, Any]) -> str:
    sae = report.get("sae") or {}
    metrics = sae.get("metrics") or {}
    facts = [
        ("Run", esc(report.get("run_id"))),
        (
            "Status",
            f'<span class="status-{esc(report.get("status"))}">{esc(report.get("status"))}</span>',
        ),
        ("Model", esc(report.get("model"))),
        ("Hook", esc(report.get("hook"))),
        ("Prompts", f"{fmt(report.get('n_prompts'))} ({fmt(report.get('n_tokens'))} tokens)"),
        ("SAE", f"{esc(sae.get('source'))} <span class=muted>{esc(sae.get('sae_id'))}</span>"),
        (
            "SAE shape",
            f"d_in {fmt(sae.get('d_in'))} × d_sae {fmt(sae.get('d_sae'))}, {esc(sae.get('architecture'))}",
        ),
    ]
    quality = [
        ("Explained variance", fmt(metrics.get("explained_variance"))),
        ("L0", fmt(metrics.get("l0"))),
        ("Dead fraction", pct(metrics.get("dead_fraction"))),
        ("CE loss recovered", pct(metrics.get("ce_loss_recovered"))),
    ]
    error = report.get("error")
    error_html = ""
    if error:
        error_html = (
            f'<div class="error"><strong>{esc(error.get("error"))}</strong>: '
            f"{esc(error.get('message'))}</div>"
        )
    return (
        f'<section id="run"><h2>Run</h2>{error_html}{_kv(facts)}'
        f"<h3>SAE quality</h3>{_kv(quality)}</section>"
    )


def section_features_table(
    features: Sequence[Mapping[str, Any]], ranking: Mapping[str, Any]
) -> str:
    if not features:
        return '<section id="features"><h2>Top features</h2><p class="muted">No features ranked.</p></section>'
    rows = [
        (
            f'<a href="#feature-{int(f["id"])}">#{int(f["id"])}</a>',
            _label_cell(f),
            esc(f.get("label_source") or "–"),
            _score_cell(f),
            pct(f.get("frequency")),
            fmt(f.get("max_activation")),
            fmt(f.get("mean_activation")),
        )
        for f in features
    ]
    note = esc(ranking.get("method") or "")
    selection = esc(ranking.get("label_selection") or "")
    return (
        '<section id="features"><h2>Top features</h2>'
        f'<p class="muted">{note}. Labelled: {selection}.</p>'
        + _table(
            ["Feature", "Label", "Labeler", "Score", "Frequency", "Max act.", "Mean act."],
            rows,
            "features",
        )
        + "</section>"
    )


def section_prompts(report: Mapping[str, Any], labels: Mapping[int, str]) -> str:
    prompts = report.get("prompts") or []
    feature_max = {
        int(f["id"]): float(f.get("max_activation") or 0.0) for f in report.get("features") or []
    }
    parts = ['<section id="prompts"><h2>Prompts</h2>']
    omitted = int(report.get("n_prompts_omitted") or 0)
    parts.append(
        f'<p class="muted">{len(prompts)} prompts shown'
        + (f", {omitted} omitted (report_max_prompts)" if omitted else "")
        + ". Colour: the strongest activation among the top features; click a token for its "
        "features.</p>"
    )
    options = "".join(
        f'<option value="{fid}">#{fid} {esc(labels.get(fid) or "")}</option>' for fid in feature_max
    )
    parts.append(
        '<label class="colour-by">Colour by <select id="colour-by"><option value="">'
        f"strongest top feature</option>{options}</select></label>"
        '<div id="token-panel" class="panel" hidden></div>'
    )
    for prompt in prompts:
        spans = []
        for tok in prompt.get("tokens") or []:
            # Only the report's top features colour a token: dense, always-on
            # features would paint everything.
            best, top = 0.0, 0.0
            for f in tok.get("features") or []:
                fmax = feature_max.get(int(f["id"]))
                if fmax and float(f["activation"]) / fmax > (best / top if top else 0.0):
                    best, top = float(f["activation"]), fmax
            spans.append(
                token_span(tok.get("text", ""), best, top, tok.get("features") or [], labels)
            )
        set_badge = (
            ""
            if prompt.get("set", "main") == "main"
            else f'<span class="badge">{esc(prompt.get("set"))}</span>'
        )
        parts.append(
            f'<div class="prompt" data-prompt-id="{esc(prompt.get("id"))}">'
            f'<div class="pid">{esc(prompt.get("id"))}{set_badge}</div>'
            f'<div class="ctx">{"".join(spans)}</div></div>'
        )
    parts.append("</section>")
    return "".join(parts)


def _token_chips(tokens: Sequence[Mapping[str, Any]], key: str) -> str:
    if not tokens:
        return '<span class="muted">–</span>'
    return " ".join(
        f'<code title="{esc(key)} {fmt(t.get(key))}">{esc(t.get("token"))}</code>'
        for t in tokens[:10]
    )


def feature_card(feature: Mapping[str, Any]) -> str:
    fid = int(feature["id"])
    explanation = feature.get("explanation")
    reused = " (reused from the label registry)" if feature.get("label_reused") else ""
    top_tokens = ", ".join(
        f"<code>{esc(t['token'])}</code>×{int(t['count'])}" for t in feature.get("top_tokens") or []
    )
    examples = "".join(example_html(ex) for ex in feature.get("examples") or [])
    facts = [
        ("Labeler", esc(feature.get("label_source") or "–") + esc(reused)),
        (
            "Score",
            _score_cell(feature)
            + (
                f' <span class="muted">{esc(feature.get("score_reason"))}</span>'
                if feature.get("score") is None and feature.get("label")
                else ""
            ),
        ),
        (
            "Frequency",
            f"{pct(feature.get('frequency'))} of tokens, {pct(feature.get('prompt_frequency'))} of prompts",
        ),
        (
            "Activation",
            f"max {fmt(feature.get('max_activation'))}, mean {fmt(feature.get('mean_activation'))}",
        ),
        ("Corpus density", pct(feature.get("corpus_density"))),
        ("Top tokens", top_tokens or "–"),
    ]
    return (
        f'<article class="card" id="feature-{fid}"><h3>#{fid} · {_label_cell(feature)}</h3>'
        + (f"<p>{esc(explanation)}</p>" if explanation else "")
        + (
            f'<p class="muted">{esc(feature.get("score_reason"))}</p>'
            if not feature.get("label")
            else ""
        )
        + (
            f'<p class="muted">{esc(feature["label_fallback_reason"])}</p>'
            if feature.get("label_fallback_reason")
            else ""
        )
        + _kv(facts)
        + '<div class="cols"><div><h4>Top examples</h4>'
        + (examples or '<p class="muted">none</p>')
        + "</div><div><h4>Activation histogram"
        + (
            f' <span class="muted">({esc((feature.get("histogram") or {}).get("source"))}'
            + (", log2 bins" if (feature.get("histogram") or {}).get("scale") == "log2" else "")
            + ")</span>"
            if feature.get("histogram")
            else ""
        )
        + "</h4>"
        + histogram_svg(feature.get("histogram"))
        + "<h4>Promotes</h4>"
        + _token_chips(feature.get("promoted_tokens") or [], "logit")
        + "<h4>Suppresses</h4>"
        + _token_chips(feature.get("suppressed_tokens") or [], "logit")
        + "</div></div></article>"
    )


def section_cards(features: Sequence[Mapping[str, Any]]) -> str:
    return (
        '<section id="cards"><h2>Features</h2>'
        + "".join(feature_card(f) for f in features)
        + "</section>"
    )


def section_steering(steering: Sequence[Mapping[str, Any]]) -> str:
    if not steering:
        return '<section id="steering"><h2>Steering</h2><p class="muted">No steering was requested.</p></section>'
    parts = ['<section id="steering"><h2>Steering</h2>']
    for group in steering:
        label = group.get("feature_label")
        parts.append(
            f"<h3>Feature #{int(group.get('feature', -1))}"
            + (f" · {esc(label)}" if label else "")
            + f"</h3><p>Prompt: <q>{esc(group.get('prompt'))}</q></p>"
        )
        rows = [("0 (baseline)", f'<span class="gen">{esc(group.get("baseline"))}</span>')]
        for result in group.get("results") or []:
            text = (
                result.get("steered")
                if not result.get("error")
                else f"error: {result.get('error')}"
            )
            rows.append((fmt(result.get("strength")), f'<span class="gen">{esc(text)}</span>'))
        parts.append(_table(["Strength", "Generation"], rows, "steer"))
    parts.append("</section>")
    return "".join(parts)


def section_contrast(contrast: Mapping[str, Any] | None) -> str:
    if not contrast:
        return '<section id="contrast"><h2>Contrast</h2><p class="muted">No contrast set.</p></section>'
    n_prompts = contrast.get("n_prompts") or {}

    def table(rows: Sequence[Mapping[str, Any]]) -> str:
        return _table(
            ["Feature", "Label", "Main freq.", "Contrast freq.", "Difference"],
            [
                (
                    f'<a href="#feature-{int(r["id"])}">#{int(r["id"])}</a>',
                    esc(r.get("label") or "–"),
                    pct(r.get("main_frequency")),
                    pct(r.get("contrast_frequency")),
                    pct(r.get("frequency_diff")),
                )
                for r in rows[:15]
            ],
            "contrast",
        )

    return (
        '<section id="contrast"><h2>Contrast</h2>'
        f"<p>Main set: {fmt(n_prompts.get('main'))} prompts; contrast set "
        f"<code>{esc(contrast.get('contrast_set'))}</code>: {fmt(n_prompts.get('contrast'))} prompts.</p>"
        f"<h3>More frequent in the main set</h3>{table(contrast.get('more_in_main') or [])}"
        f"<h3>More frequent in the contrast set</h3>{table(contrast.get('more_in_contrast') or [])}"
        "</section>"
    )


def section_cost(report: Mapping[str, Any]) -> str:
    cost = report.get("cost") or {}
    timings = report.get("timings") or {}
    pairs = [
        ("GPU seconds", fmt(cost.get("gpu_seconds"))),
        (
            "Training",
            f"{fmt(timings.get('training_s'))} s, {fmt(timings.get('training_tokens_per_s'))} tokens/s",
        ),
        (
            "Extraction",
            f"{fmt(timings.get('extraction_s'))} s, {fmt(timings.get('extraction_tokens_per_s'))} tokens/s",
        ),
        ("Steering", f"{fmt(timings.get('steering_s'))} s"),
        ("LLM requests", fmt(cost.get("llm_requests"))),
        (
            "LLM tokens",
            f"{fmt(cost.get('llm_input_tokens'))} in, {fmt(cost.get('llm_output_tokens'))} out",
        ),
        (
            "Estimated USD",
            f"{cost.get('estimated_usd', 0):.4f} <span class=muted>{esc(cost.get('estimated_usd_basis'))}</span>",
        ),
    ]
    return f'<section id="cost"><h2>Cost and throughput</h2>{_kv(pairs)}</section>'


def section_provenance(report: Mapping[str, Any]) -> str:
    text = json.dumps(report.get("provenance") or {}, indent=2, ensure_ascii=False, sort_keys=True)
    return f'<section id="provenance"><h2>Provenance</h2><pre>{esc(text)}</pre></section>'


def render_html(report: Mapping[str, Any]) -> str:
    features = report.get("features") or []
    labels = {int(f["id"]): f.get("label") or "" for f in features}
    data = {
        "labels": {str(k): v for k, v in labels.items()},
        "max": {str(int(f["id"])): f.get("max_activation") or 0 for f in features},
    }
    title = f"saeflow report · {report.get('run_id')}"
    body = "".join(
        [
            section_run(report),
            section_features_table(features, report.get("ranking") or {}),
            section_prompts(report, labels),
            section_cards(features),
            section_steering(report.get("steering") or []),
            section_contrast(report.get("contrast")),
            section_cost(report),
            section_provenance(report),
        ]
    )
    nav = "".join(
        f'<a href="#{s}">{esc(n)}</a>'
        for s, n in (
            ("run", "Run"),
            ("features", "Top features"),
            ("prompts", "Prompts"),
            ("cards", "Feature cards"),
            ("steering", "Steering"),
            ("contrast", "Contrast"),
            ("cost", "Cost"),
            ("provenance", "Provenance"),
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{esc(title)}</title><style>{PAGE_CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><nav>{nav}</nav></header><main>{body}</main>"
        f'<script type="application/json" id="saeflow-data">{script_json(data)}</script>'
        f"<script>{PAGE_JS}</script></body></html>\n"
    )
