"""interpretation: are the report's top features about the prompts, and do labels beat chance?

Runs the embedded mode (the real CLI, offline labeller) on the topical prompt sets of
examples/topics/ and on pairs of them as contrasts, with the demo's SAE (the state dir of
the `demo` part when it ran, else a state dir of its own, trained once), and reads each
report.json:

- ``topics``: for each topical set, how many of the top 10 features (default view) are about
  the topic (bench/topics.py: 2 of the 5 strongest tokens, or 2 label words, in the topic's
  vocabulary); goal >= 4 of 10.
- ``contrast``: for pairs of topics, how many of the top 5 on each side are about that side's
  topic, and whether each carries an effect size and a q-value; goal >= 3 of 5.
- ``examples``: on examples/prompts.jsonl, first-token features in the top 24 (goal 0) and
  pairs of top-24 features sharing a label without sharing strongest tokens (goal 0).
- ``labels``: the offline labels' mean detection score against the shuffled baseline over all
  runs (goal: +0.15).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.topics import TOPIC_WORDS, label_words, on_topic

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ROOT / "examples" / "topics"
WORK = ROOT / "bench" / "work"
PAIRS = (
    ("pets", "cooking"),
    ("space", "music"),
    ("sports", "finance"),
    ("programming", "medicine"),
)


def _run(prompts: Path, out: Path, state: Path, *extra: str) -> dict:
    command = [str(Path(sys.executable).with_name("saeflow")), "run", str(prompts)]
    command += ["--out", str(out), "--label", "offline", *extra]
    env = {**os.environ, "SAEFLOW_STATE_DIR": str(state)}
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    reports = sorted(out.glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text())


def _words(entry: dict) -> list[str]:
    tokens = entry.get("top_tokens") or []
    return [t if isinstance(t, str) else t["token"] for t in tokens[:5]]


def _about(entry: dict, topic: str) -> bool:
    vocabulary = TOPIC_WORDS[topic]
    return on_topic(_words(entry), vocabulary) or on_topic(
        label_words(entry.get("label")), vocabulary
    )


def _top(report: dict, n: int) -> list[dict]:
    by_id = {f["id"]: f for f in report["features"]}
    ids = report["ranking"]["views"].get("specific") or [f["id"] for f in report["features"]]
    return [by_id[f] for f in ids[:n] if f in by_id]


def _describe(entry: dict, topic: str) -> dict:
    return {
        "id": entry["id"],
        "label": entry.get("label"),
        "tokens": _words(entry),
        "about": _about(entry, topic),
    }


def topic_figures(state: Path, out: Path) -> tuple[dict, list[dict]]:
    figures, reports = {}, []
    for topic in sorted(TOPIC_WORDS):
        report = _run(TOPICS / f"{topic}.jsonl", out / topic, state)
        reports.append(report)
        top = [_describe(f, topic) for f in _top(report, 10)]
        figures[topic] = {"about_topic_of_top10": sum(f["about"] for f in top), "top10": top}
    return figures, reports


def contrast_figures(state: Path, out: Path) -> tuple[dict, list[dict]]:
    figures, reports = {}, []
    for main, other in PAIRS:
        report = _run(
            TOPICS / f"{main}.jsonl",
            out / f"{main}-vs-{other}",
            state,
            "--contrast",
            str(TOPICS / f"{other}.jsonl"),
        )
        reports.append(report)
        contrast = report["contrast"] or {}
        entry = {}
        for side, topic in (("more_in_main", main), ("more_in_contrast", other)):
            rows = (contrast.get(side) or [])[:5]
            entry[side] = {
                "topic": topic,
                "about_topic_of_top5": sum(_about(r, topic) for r in rows),
                "all_have_effect_and_q": all(
                    r.get("effect_size") is not None and r.get("q_value") is not None for r in rows
                ),
                "n_significant": (contrast.get("n_significant") or {}).get(side),
                "top5": [
                    dict(_describe(r, topic), q=r.get("q_value"), effect=r.get("effect_size"))
                    for r in rows
                ],
            }
        figures[f"{main}_vs_{other}"] = entry
    return figures, reports


def examples_figures(state: Path, out: Path) -> tuple[dict, dict]:
    report = _run(ROOT / "examples" / "prompts.jsonl", out / "examples", state)
    top = _top(report, 24)
    first_token = [f["id"] for f in top if f.get("first_token")]
    seen: dict[str, tuple[int, list[str]]] = {}
    shared = []
    for f in top:
        if not f.get("label"):
            continue
        tokens = sorted(t["token"].strip().lower() for t in (f.get("top_tokens") or [])[:4])
        if f["label"] in seen and seen[f["label"]][1] != tokens:
            shared.append([seen[f["label"]][0], f["id"]])
        seen.setdefault(f["label"], (f["id"], tokens))
    return {
        "first_token_in_top24": first_token,
        "labels_shared_without_same_tokens": shared,
        "n_top": len(top),
    }, report


def label_figures(reports: list[dict]) -> dict:
    scored = [
        f
        for r in reports
        for f in r["features"]
        if (f.get("detection") or {}).get("balanced_accuracy") is not None
        and (f.get("baseline") or {}).get("balanced_accuracy") is not None
    ]
    if not scored:
        return {"n_scored": 0}
    mean = sum(f["detection"]["balanced_accuracy"] for f in scored) / len(scored)
    base = sum(f["baseline"]["balanced_accuracy"] for f in scored) / len(scored)
    return {
        "labeler": "offline heuristic",
        "n_scored": len(scored),
        "mean_balanced_accuracy": round(mean, 4),
        "baseline_mean_balanced_accuracy": round(base, 4),
        "improvement": round(mean - base, 4),
        "goal_improvement": 0.15,
    }


def run(state: Path | None = None) -> dict:
    state = state or WORK / "demo-state"
    out = WORK / "interpretation"
    topics, topic_reports = topic_figures(state, out)
    contrast, contrast_reports = contrast_figures(state, out)
    examples, example_report = examples_figures(state, out)
    return {
        "topics": topics,
        "topics_meeting_goal": sum(t["about_topic_of_top10"] >= 4 for t in topics.values()),
        "n_topics": len(topics),
        "contrast": contrast,
        "examples": examples,
        "labels": label_figures(topic_reports + contrast_reports + [example_report]),
        "quality_on_prompts": {
            name: (r["sae"].get("on_prompts") or {}).get("explained_variance")
            for name, r in zip(sorted(TOPIC_WORDS), topic_reports, strict=True)
        },
    }
