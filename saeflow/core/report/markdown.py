"""summary.md: the short text version of the report.

Markdown renderers pass raw HTML through, so user text is HTML-escaped as well as
made table-safe (pipes, newlines, backticks).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

MAX_FEATURES = 15


def md(value: Any) -> str:
    text = html.escape("" if value is None else str(value), quote=False)
    for raw, escaped in (
        ("|", "\\|"),
        ("`", "\\`"),
        ("*", "\\*"),
        ("_", "\\_"),
        ("[", "\\["),
        ("]", "\\]"),
    ):
        text = text.replace(raw, escaped)
    return " ".join(text.split())


def _num(value: Any, spec: str = ".3g") -> str:
    return (
        "–"
        if not isinstance(value, int | float) or isinstance(value, bool)
        else format(value, spec)
    )


def _pct(value: Any) -> str:
    return "–" if not isinstance(value, int | float) else f"{100 * value:.2f}%"


def render_markdown(report: Mapping[str, Any]) -> str:
    sae = report.get("sae") or {}
    metrics = sae.get("metrics") or {}
    cost = report.get("cost") or {}
    timings = report.get("timings") or {}
    lines = [
        f"# saeflow report {md(report.get('run_id'))}",
        "",
        f"- Status: **{md(report.get('status'))}**",
        f"- Model: {md(report.get('model'))}, hook {md(report.get('hook'))}",
        f"- SAE: {md(sae.get('source'))} ({md(sae.get('architecture'))}, d_sae {_num(sae.get('d_sae'), 'd')})",
        f"- SAE quality: explained variance {_num(metrics.get('explained_variance'))}, "
        f"L0 {_num(metrics.get('l0'))}, dead {_pct(metrics.get('dead_fraction'))}, "
        f"CE loss recovered {_pct(metrics.get('ce_loss_recovered'))}",
        f"- Prompts: {_num(report.get('n_prompts'), 'd')} ({_num(report.get('n_tokens'), 'd')} tokens)",
    ]
    error = report.get("error")
    if error:
        lines += ["", f"**Error {md(error.get('error'))}**: {md(error.get('message'))}"]
    features = report.get("features") or []
    lines += ["", "## Top features", ""]
    if features:
        lines += [
            "| Feature | Label | Labeler | Score | Frequency | Max act. |",
            "|---|---|---|---|---|---|",
        ]
        for f in features[:MAX_FEATURES]:
            score = _num(f.get("score"), ".2f") if f.get("score") is not None else "n/a"
            lines.append(
                f"| #{int(f['id'])} | {md(f.get('label') or '(not labelled)')} | "
                f"{md(f.get('label_source') or '–')} | {score} | {_pct(f.get('frequency'))} | "
                f"{_num(f.get('max_activation'))} |"
            )
        if len(features) > MAX_FEATURES:
            lines.append(f"\n{len(features) - MAX_FEATURES} more in report.json / index.html.")
    else:
        lines.append("No features ranked.")
    contrast = report.get("contrast")
    if contrast:
        lines += ["", "## Contrast", ""]
        for side, title in (("more_in_main", "main set"), ("more_in_contrast", "contrast set")):
            rows = contrast.get(side) or []
            shown = ", ".join(
                f"#{int(r['id'])} {md(r.get('label') or '')} ({_pct(r.get('frequency_diff'))})"
                for r in rows[:5]
            )
            lines.append(f"- More frequent in the {title}: {shown or 'none'}")
    steering = report.get("steering") or []
    if steering:
        lines += ["", "## Steering", ""]
        for group in steering:
            lines.append(
                f'- Feature #{int(group.get("feature", -1))} on "{md(group.get("prompt"))}": '
                f'baseline "{md(group.get("baseline"))}"'
            )
            for result in group.get("results") or []:
                lines.append(
                    f'  - strength {_num(result.get("strength"))}: "{md(result.get("steered"))}"'
                )
    lines += [
        "",
        "## Cost and throughput",
        "",
        f"- GPU seconds: {_num(cost.get('gpu_seconds'))}",
        f"- Extraction: {_num(timings.get('extraction_tokens_per_s'))} tokens/s",
        f"- LLM: {_num(cost.get('llm_requests'), 'd')} requests, {_num(cost.get('llm_input_tokens'), 'd')} input "
        f"+ {_num(cost.get('llm_output_tokens'), 'd')} output tokens, about "
        f"{_num(cost.get('estimated_usd'), '.4f')} USD",
        "",
    ]
    return "\n".join(lines)
