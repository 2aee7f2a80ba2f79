"""Workflow step "write_report": gather the run's outputs from S3, write the report.

Reads run.json, aggregate.json, bundles, labels, the extraction output (streamed:
only ``report_max_prompts`` prompts are kept), the steering output and the SAE's
metrics; writes ``reports/<run_id>/index.html``, ``report.json`` and ``summary.md``;
returns ``$.report``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import saeflow
from saeflow.core import layout
from saeflow.core.errors import ObjectNotFound, ReportError, SaeflowError
from saeflow.core.labeling.label import unlabelled_record
from saeflow.core.report.build import ReportInputs, build_report
from saeflow.core.report.render import render_html, render_markdown
from saeflow.ports import ObjectStore
from saeflow.steps.aggregate import iter_extraction_records, iter_json_lines, store_for_uri
from saeflow.steps.record_failure import explain_failure
from saeflow.steps.run_record import now_iso, update_run_record

logger = logging.getLogger(__name__)


def failed_item_record(item: Mapping[str, Any]) -> dict[str, Any]:
    """The unlabelled record of a Map item whose task failed for good (the Map's Catch
    hands ``{"feature_id", "error": {"Error", "Cause"}}``), read as a failed run's error."""
    error = item.get("error") or {}
    failure = explain_failure(error.get("Error") or "an error", error.get("Cause"))
    reason = f"labelling failed after its retries ({failure['error']})"
    if failure.get("message"):
        reason += f": {str(failure['message'])[:300]}"
    return unlabelled_record(int(item["feature_id"]), reason)


@dataclass(frozen=True)
class ReportStepSettings:
    """Versions the caller knows (library versions, image URI...) for provenance."""

    versions: Mapping[str, Any] = field(default_factory=dict)


def _get_json_or_none(store: ObjectStore, key: str) -> Any:
    try:
        return store.get_json(key)
    except ObjectNotFound:
        return None


def sae_file(store: ObjectStore, sae_uri: str | None, name: str) -> Any:
    if not sae_uri:
        return None
    source, prefix = store_for_uri(store, sae_uri.rstrip("/") + "/")
    return _get_json_or_none(source, prefix + name)


def load_labels(store: ObjectStore, run_id: str, items: Any) -> dict[int, dict[str, Any]]:
    """Label records of this run: from the Map's results, else by listing labels/.

    A Map item whose task failed for good (the Map's Catch) carries its error instead of
    a ``label_key``: the feature is shown unlabelled, with that error as the reason.
    """
    labels: dict[int, dict[str, Any]] = {}
    keys: list[str] = []
    if isinstance(items, list) and items:
        for item in items:
            if not isinstance(item, Mapping):
                continue
            if item.get("label_key"):
                keys.append(item["label_key"])
            elif item.get("error") and item.get("feature_id") is not None:
                labels[int(item["feature_id"])] = failed_item_record(item)
    else:
        keys = [
            k
            for k in store.list_keys(layout.run_prefix(run_id) + "labels/")
            if layout.is_label_key(k)
        ]
    for key in keys:
        record = _get_json_or_none(store, key)
        if isinstance(record, dict) and "feature_id" in record:
            labels[int(record["feature_id"])] = record
        else:
            logger.warning("label %s is missing or malformed; the feature is shown unlabelled", key)
    return labels


def iter_steering(
    store: ObjectStore, run_state: Mapping[str, Any], has_steering: bool
) -> Iterator[dict]:
    """Steering output lines (every ``.out`` under ``steer_output_uri``), if steering ran."""
    if not has_steering:
        return
    run_id = run_state["run_id"]
    uri = run_state.get("steer_output_uri")
    if uri:
        source, prefix = store_for_uri(store, uri.rstrip("/") + "/")
        keys = [k for k in source.list_keys(prefix) if k.endswith(".out")]
    else:
        source, keys = store, [layout.steer_output_key(run_id)]
    if not keys:
        logger.warning("steering was requested but no output exists under %s", uri)
    for key in keys:
        try:
            yield from iter_json_lines(source, key, ReportError)
        except ObjectNotFound:
            logger.warning("steering was requested but %s is missing", key)


def prompt_records(
    store: ObjectStore, run_state: Mapping[str, Any], aggregate: Mapping[str, Any]
) -> Iterator[dict]:
    """The prompts the report shows: the aggregate step's sample (a uniform sample of the
    set, at most report_max_prompts), else the first records of the extraction output."""
    key = aggregate.get("prompt_sample_key")
    if key and store.exists(key):
        return iter_json_lines(store, key, ReportError)
    return iter_extraction_records(store, run_state["extract_uri"])


def report_files(report: Mapping[str, Any]) -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, content type) of one report."""
    return {
        "index.html": (render_html(report).encode(), "text/html; charset=utf-8"),
        "report.json": (
            json.dumps(report, ensure_ascii=False, separators=(",", ":")).encode(),
            "application/json",
        ),
        "summary.md": (render_markdown(report).encode(), "text/markdown; charset=utf-8"),
    }


def write_report_files(store: ObjectStore, run_id: str, report: Mapping[str, Any]) -> str:
    prefix = layout.report_prefix(run_id)
    for name, (data, content_type) in report_files(report).items():
        store.put_bytes(prefix + name, data, content_type)
    return prefix


def gather_inputs(
    event: Mapping[str, Any], store: ObjectStore, settings: ReportStepSettings
) -> ReportInputs:
    run_state = event["run"]
    run_id = run_state["run_id"]
    options = run_state.get("options") or {}
    sae_state = event.get("sae") or {}
    registered = event.get("registered") or {}
    aggregate_key = (event.get("aggregate") or {}).get("aggregate_key") or layout.aggregate_key(
        run_id
    )
    aggregate = store.get_json(aggregate_key)
    bundles = {}
    for fid, key in (aggregate.get("bundles") or {}).items():
        bundle = _get_json_or_none(store, key)
        if bundle is not None:
            bundles[int(fid)] = bundle
    metrics = registered.get("metrics") or sae_file(store, sae_state.get("uri"), layout.SAE_METRICS)
    manifest = sae_file(store, sae_state.get("uri"), layout.SAE_MANIFEST) or sae_file(
        store, sae_state.get("uri"), "cfg.json"
    )
    versions = {"saeflow": saeflow.__version__, **settings.versions}
    return ReportInputs(
        run_id=run_id,
        status="succeeded",
        options=options,
        run_state=run_state,
        run_json=_get_json_or_none(store, layout.run_json_key(run_id)) or {},
        sae_state=sae_state,
        sae_metrics=metrics,
        sae_manifest=manifest if isinstance(manifest, dict) else None,
        gate=registered.get("gate"),
        aggregate=aggregate,
        bundles=bundles,
        labels=load_labels(store, run_id, event.get("labels")),
        prompt_records=prompt_records(store, run_state, aggregate),
        max_prompts=int(options.get("report_max_prompts") or 200),
        steering_records=iter_steering(
            store,
            run_state,
            bool((event.get("aggregate") or {}).get("has_steering", run_state.get("has_steering"))),
        ),
        training=event.get("training"),
        extraction=event.get("extraction"),
        steering_job=event.get("steering"),
        generated_at=now_iso(),
        versions=versions,
    )


def run(
    event: dict[str, Any],
    *,
    store: ObjectStore,
    settings: ReportStepSettings | None = None,
) -> dict[str, Any]:
    settings = settings or ReportStepSettings()
    run_id = event["run"]["run_id"]
    try:
        report = build_report(gather_inputs(event, store, settings))
    except SaeflowError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"cannot build the report of {run_id}: {exc!r}") from exc
    prefix = write_report_files(store, run_id, report)
    update_run_record(store, run_id, status="succeeded", succeeded_at=now_iso(), report=prefix)
    logger.info("report of %s written under %s", run_id, prefix)
    return {"report_prefix": prefix, "status": "succeeded"}
