"""validate: read and check the prompt set, resolve run options, write the run's inputs.

Input: the execution input ``{"run_id", "bucket", "key", "version_id", "etag",
"overrides"}`` (the whole state ``$``). Output: the ``$.run`` piece (docs/ARCHITECTURE.md):

``{"run_id", "bucket", "key", "options", "n_prompts", "n_contrast_prompts", "input_uri",
"extract_uri", "steer_input_uri" | None, "steer_output_uri", "n_shards",
"transform_instance_count", "names", "has_steering"}``

Writes ``runs/<id>/run.json`` (status ``running``), ``runs/<id>/input/shard-NNNNN.jsonl``
(main prompts then contrast prompts, ``shard_size`` records each; record =
``{"prompt_index", "id", "set", "text"}``, ``prompt_index`` counted within its set) and,
when steering is asked, ``runs/<id>/steer/input.jsonl`` (one ``{"steer": {...}}`` record per
request x prompt x strength).

Raises the named errors of :mod:`saeflow.core.promptset`, :mod:`saeflow.core.options` and
:mod:`saeflow.core.run_policy` (spend limits, what a run may read, known model shapes):
every check that needs no GPU happens here, before anything is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from saeflow import __version__ as saeflow_version
from saeflow.core import layout
from saeflow.core.errors import InvalidPromptSet, InvalidRunOptions, ObjectNotFound, SaeflowError
from saeflow.core.labeling.allowlist import check_label_model
from saeflow.core.options import resolve_options
from saeflow.core.promptset import (
    Prompt,
    PromptLimits,
    PromptSet,
    parse_options_document,
    parse_prompt_lines,
    prompt_format,
)
from saeflow.core.run_policy import RunLimits, check_run
from saeflow.core.steering import steer_records
from saeflow.ports import ObjectStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateSettings:
    """Deployment settings of the validate step (template Parameters -> environment)."""

    limits: PromptLimits = field(default_factory=PromptLimits)
    shard_size: int = 1_000
    """Prompts per input shard (one batch transform input file)."""
    run_limits: RunLimits = field(default_factory=RunLimits)
    """The deployment's spend limits (training tokens, transform instances...)."""
    label_model_ids: tuple[str, ...] = ()
    """The models ``label.model_id`` may name (BedrockModelId + LabelModelIds); empty: any."""


def _store_for(store: ObjectStore, bucket: str) -> ObjectStore:
    return store if bucket == store.bucket else store.for_bucket(bucket)


def _existing_key(store: ObjectStore, key: str) -> str:
    # S3 notifications URL-encode keys ("my prompts.jsonl" -> "my+prompts.jsonl");
    # accept either form so a run never fails on how the event spelled its key.
    if store.exists(key):
        return key
    decoded = unquote_plus(key)
    if decoded != key and store.exists(decoded):
        return decoded
    raise InvalidPromptSet(f"{store.uri(key)} does not exist (deleted after upload?)")


def read_prompt_set(
    store: ObjectStore, key: str, limits: PromptLimits, version_id: str | None = None
) -> PromptSet:
    """Stream and parse one prompt set (format from the key's suffix).

    ``version_id`` pins the upload that started the run, so a quick re-upload of the same
    key (a new run) cannot change what this run reads.
    """
    fmt = prompt_format(key)
    key = _existing_key(store, key)
    try:
        return parse_prompt_lines(store.iter_lines(key, version_id), fmt, limits)
    except ObjectNotFound as exc:
        raise InvalidPromptSet(f"{store.uri(key)} does not exist") from exc


def read_sidecar(store: ObjectStore, key: str) -> dict[str, Any] | None:
    sidecar = layout.sidecar_key(key)
    if not store.exists(sidecar):
        return None
    return parse_options_document(store.get_bytes(sidecar), sidecar)


def read_contrast(store: ObjectStore, ref: str, limits: PromptLimits) -> list[Prompt]:
    """The contrast set named by ``options.contrast`` (a key in the bucket, or s3://...)."""
    if ref.startswith("s3://"):
        bucket, key = layout.parse_s3_uri(ref)
        source = _store_for(store, bucket)
    else:
        source, key = store, ref
    try:
        parsed = read_prompt_set(source, key, limits)
    except SaeflowError as exc:
        # Same error name and line, but say it is about the contrast set.
        raise type(exc)(f"contrast set {ref}: {exc.message}", line=exc.line) from exc
    if parsed.options:
        logger.info("options line in contrast set %s ignored", ref)
    return parsed.prompts


def _jsonl(records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        for r in records
    )


def write_shards(
    store: ObjectStore, run_id: str, main: list[Prompt], contrast: list[Prompt], shard_size: int
) -> int:
    """Write the extraction input shards; returns how many were written."""
    records = [p.record("main") for p in main] + [p.record("contrast") for p in contrast]
    n_shards = 0
    for start in range(0, len(records), shard_size):
        store.put_bytes(
            layout.input_shard_key(run_id, n_shards),
            _jsonl(records[start : start + shard_size]),
            "application/jsonlines",
        )
        n_shards += 1
    return n_shards


def run(event: dict[str, Any], *, store: ObjectStore, settings: ValidateSettings) -> dict[str, Any]:
    run_id = event["run_id"]
    bucket = event.get("bucket") or store.bucket
    key = event["key"]
    store = _store_for(store, bucket)
    overrides = event.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise InvalidRunOptions("overrides must be an object of option values")

    version_id = event.get("version_id")
    version_id = version_id if version_id and version_id != "null" else None
    prompt_set = read_prompt_set(store, key, settings.limits, version_id)
    sidecar = read_sidecar(store, key)
    try:
        options = resolve_options(sidecar, prompt_set.options, overrides)
        check_label_model(options.label, settings.label_model_ids)
    except SaeflowError as exc:
        # Point at the options line only when it is the sole source of options.
        if sidecar is None and not overrides and prompt_set.options_line is not None:
            exc.line = prompt_set.options_line
        raise
    check_run(options, bucket=bucket, limits=settings.run_limits)
    contrast = read_contrast(store, options.contrast, settings.limits) if options.contrast else []

    n_shards = write_shards(store, run_id, prompt_set.prompts, contrast, settings.shard_size)
    steer_input_uri = None
    if options.steer:
        steer_key = layout.steer_input_key(run_id)
        # steer=auto: the aggregate step writes the requests once it knows the features.
        if not options.steer_auto:
            records = steer_records(options.steer_requests)
            store.put_bytes(steer_key, _jsonl(records), "application/jsonlines")
        steer_input_uri = store.uri(steer_key)

    piece = {
        "run_id": run_id,
        "bucket": bucket,
        "key": key,
        "options": options.to_dict(),
        "n_prompts": len(prompt_set.prompts),
        "n_contrast_prompts": len(contrast),
        "input_uri": store.uri(layout.input_prefix(run_id)),
        "extract_uri": store.uri(layout.extract_prefix(run_id)),
        "steer_input_uri": steer_input_uri,
        "steer_output_uri": store.uri(layout.steer_output_prefix(run_id)),
        "n_shards": n_shards,
        "transform_instance_count": settings.run_limits.transform_instances(n_shards),
        "names": layout.sagemaker_names(run_id),
        "has_steering": bool(options.steer),
    }
    store.put_json(
        layout.run_json_key(run_id),
        {
            "run_id": run_id,
            "status": "running",
            "source": {
                "bucket": bucket,
                "key": key,
                "version_id": event.get("version_id"),
                "etag": event.get("etag"),
                "format": prompt_set.format,
            },
            "options": piece["options"],
            "n_prompts": piece["n_prompts"],
            "n_contrast_prompts": piece["n_contrast_prompts"],
            "n_shards": n_shards,
            "names": piece["names"],
            "validated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "saeflow_version": saeflow_version,
        },
    )
    logger.info(
        "run %s: %d prompts (+%d contrast) in %d shards",
        run_id,
        piece["n_prompts"],
        piece["n_contrast_prompts"],
        n_shards,
    )
    return piece
