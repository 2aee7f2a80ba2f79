"""validate: read and check the prompt set, resolve run options, write the run's inputs.

Input: the execution input ``{"run_id", "bucket", "key", "version_id", "etag",
"overrides"}`` (the whole state ``$``). Output: the ``$.run`` piece (docs/ARCHITECTURE.md):

``{"run_id", "bucket", "key", "options", "n_prompts", "n_contrast_prompts", "input_uri",
"extract_uri", "steer_input_uri" | None, "steer_output_uri", "n_shards",
"transform_instance_count", "transform", "reduce", "token_check", "names",
"has_steering"}``

Streams the prompt set (and the contrast set) once, in bounded memory whatever its size
(:class:`saeflow.core.promptset.PromptReader`): each prompt is checked (count, length in
bytes and in tokens, id unique among the set's ids kept as 64-bit hashes) and written to
``runs/<id>/input/shard-NNNNN.jsonl`` as the shard fills (main prompts then contrast
prompts, ``shard_size`` records each; record = ``{"prompt_index", "id", "set", "text"}``,
``prompt_index`` counted within its set). Then ``runs/<id>/shards.json`` (the map/reduce
path's manifest), ``runs/<id>/run.json`` (status ``running``) and, when steering is asked,
``runs/<id>/steer/input.jsonl``.

Raises the named errors of :mod:`saeflow.core.promptset`, :mod:`saeflow.core.options`,
:mod:`saeflow.core.token_check` and :mod:`saeflow.core.run_policy` (spend limits, what a
run may read, known model shapes): every check that needs no GPU happens here. A prompt set
that fails part-way may leave shards under ``runs/<id>/input/``; nothing reads them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from saeflow import __version__ as saeflow_version
from saeflow.core import layout
from saeflow.core.contract import DEFAULT_MODEL, canonical_model
from saeflow.core.errors import InvalidPromptSet, InvalidRunOptions, ObjectNotFound, SaeflowError
from saeflow.core.labeling.allowlist import check_label_model
from saeflow.core.options import merge_option_layers, resolve_options
from saeflow.core.promptset import (
    PromptLimits,
    PromptReader,
    parse_options_document,
    prompt_format,
)
from saeflow.core.run_policy import RunLimits, check_run
from saeflow.core.scale import ReducePlan, plan_transform
from saeflow.core.steering import steer_records
from saeflow.core.token_check import TokenCheck, TokenCounter
from saeflow.ports import ObjectStore
from saeflow.steps.run_record import now_iso

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
    transform_instance_type: str = "ml.g5.xlarge"
    """The extraction's instance type (template TransformInstanceType): sizes requests."""
    reduce_batch_size: int = 32
    """Shard partials one merge step takes (template ReduceBatchSize)."""
    map_concurrency: int = 100
    """Children of the Distributed Maps running at once (template MapConcurrency)."""


# Finds the model's tokenizer for exact counts (None: none here): saeflow.adapters.token_counter.
TokenizerSource = Callable[[str], TokenCounter | None]


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


def _open(store: ObjectStore, key: str, version_id: str | None) -> Iterator[bytes]:
    """The object's bytes, streamed; a missing object is the prompt set's error."""
    try:
        yield from store.iter_chunks(key, version_id)
    except ObjectNotFound as exc:
        raise InvalidPromptSet(f"{store.uri(key)} does not exist") from exc


class ShardWriter:
    """Extraction input records into ``shard-NNNNN.jsonl`` objects, one as each fills."""

    def __init__(self, store: ObjectStore, run_id: str, shard_size: int) -> None:
        self.store, self.run_id, self.shard_size = store, run_id, shard_size
        self.n_shards = 0
        self.n_records = 0
        self.n_bytes = 0
        self._lines: list[bytes] = []

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        self._lines.append(line)
        self.n_records += 1
        self.n_bytes += len(line)
        if len(self._lines) >= self.shard_size:
            self._flush()

    def close(self) -> int:
        self._flush()
        return self.n_shards

    def _flush(self) -> None:
        if not self._lines:
            return
        key = layout.input_shard_key(self.run_id, self.n_shards)
        self.store.put_bytes(key, b"".join(self._lines), "application/jsonlines")
        self._lines = []
        self.n_shards += 1

    @property
    def mean_record_bytes(self) -> float:
        return self.n_bytes / self.n_records if self.n_records else 0.0


@dataclass
class _Sidecar:
    """The sidecar's options, or the error reading it raised (reported after the prompts,
    as it always was)."""

    options: dict[str, Any] | None = None
    error: SaeflowError | None = None

    @classmethod
    def read(cls, store: ObjectStore, key: str) -> _Sidecar:
        sidecar = layout.sidecar_key(key)
        if not store.exists(sidecar):
            return cls()
        try:
            return cls(options=parse_options_document(store.get_bytes(sidecar), sidecar))
        except SaeflowError as exc:
            return cls(error=exc)


def _model_for_counting(sidecar: _Sidecar, reader: PromptReader, overrides: dict[str, Any]) -> str:
    """The run's model as far as known (options are fully checked later)."""
    try:
        model = merge_option_layers(sidecar.options, reader.options, overrides).get("model")
    except SaeflowError:
        model = None
    return canonical_model(model) if isinstance(model, str) and model.strip() else DEFAULT_MODEL


def _stream_set(
    reader: PromptReader, set_name: str, writer: ShardWriter, check: TokenCheck, where: str = ""
) -> None:
    """Every prompt of ``reader`` checked and written to the shards; none is kept."""
    for prompt in reader:
        location = where or ("" if prompt.line is not None else f"prompts[{prompt.index}]")
        check.check(prompt.text, prompt.line, location)
        writer.add(prompt.record(set_name))


def _read_contrast(
    store: ObjectStore,
    ref: str,
    settings: ValidateSettings,
    writer: ShardWriter,
    check: TokenCheck,
) -> int:
    """The contrast set named by ``options.contrast`` (a key in the bucket, or s3://...),
    streamed into the shards after the main set; returns its size."""
    if ref.startswith("s3://"):
        bucket, key = layout.parse_s3_uri(ref)
        source = _store_for(store, bucket)
    else:
        source, key = store, ref
    try:
        fmt = prompt_format(key)
        key = _existing_key(source, key)
        reader = PromptReader(_open(source, key, None), fmt, settings.limits)
        _stream_set(reader, "contrast", writer, check, where=f"contrast set {ref}")
        check.finish()
    except SaeflowError as exc:
        if exc.message.startswith("contrast set"):
            raise
        # Same error name and line, but say it is about the contrast set.
        raise type(exc)(f"contrast set {ref}: {exc.message}", line=exc.line) from exc
    if reader.options:
        logger.info("options line in contrast set %s ignored", ref)
    return reader.n_prompts


def _jsonl(records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        for r in records
    )


def run(
    event: dict[str, Any],
    *,
    store: ObjectStore,
    settings: ValidateSettings,
    tokenizers: TokenizerSource | None = None,
) -> dict[str, Any]:
    run_id = event["run_id"]
    bucket = event.get("bucket") or store.bucket
    key = event["key"]
    store = _store_for(store, bucket)
    overrides = event.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise InvalidRunOptions("overrides must be an object of option values")
    version_id = event.get("version_id")
    version_id = version_id if version_id and version_id != "null" else None

    # version_id pins the upload that started the run: a quick re-upload of the same key
    # (a new run) cannot change what this run reads.
    fmt = prompt_format(key)
    key = _existing_key(store, key)
    sidecar = _Sidecar.read(store, key)
    reader = PromptReader(_open(store, key, version_id), fmt, settings.limits)
    check = TokenCheck(
        settings.limits.max_prompt_tokens,
        counter_for=(
            (lambda: tokenizers(_model_for_counting(sidecar, reader, overrides)))
            if tokenizers is not None
            else None
        ),
    )
    writer = ShardWriter(store, run_id, settings.shard_size)
    _stream_set(reader, "main", writer, check)
    check.finish()  # the set's own errors come before those of its options
    if sidecar.error is not None:
        raise sidecar.error
    options = _resolve(sidecar.options, reader, overrides, settings.label_model_ids)
    check_run(options, bucket=bucket, limits=settings.run_limits)
    n_contrast = (
        _read_contrast(store, options.contrast, settings, writer, check) if options.contrast else 0
    )
    n_shards = writer.close()
    return _finish(
        event,
        store=store,
        settings=settings,
        options=options,
        fmt=fmt,
        counts=(reader.n_prompts, n_contrast, n_shards),
        writer=writer,
        token_check=check.finish(),
    )


def _resolve(
    sidecar: dict[str, Any] | None,
    reader: PromptReader,
    overrides: dict[str, Any],
    label_model_ids: tuple[str, ...],
) -> Any:
    try:
        options = resolve_options(sidecar, reader.options, overrides)
        check_label_model(options.label, label_model_ids)
        return options
    except SaeflowError as exc:
        # Point at the options line only when it is the sole source of options.
        if sidecar is None and not overrides and reader.options_line is not None:
            exc.line = reader.options_line
        raise


def _finish(
    event: dict[str, Any],
    *,
    store: ObjectStore,
    settings: ValidateSettings,
    options: Any,
    fmt: str,
    counts: tuple[int, int, int],
    writer: ShardWriter,
    token_check: dict[str, Any],
) -> dict[str, Any]:
    """Manifest, steering input, run.json; the ``$.run`` piece."""
    run_id, bucket, key = event["run_id"], store.bucket, event["key"]
    n_prompts, n_contrast, n_shards = counts
    manifest_key = layout.shard_manifest_key(run_id)
    store.put_bytes(
        manifest_key,
        json.dumps([{"shard": i} for i in range(n_shards)]).encode(),
        "application/json",
    )
    steer_input_uri = _write_steer_input(store, run_id, options)
    transform = plan_transform(
        settings.transform_instance_type,
        n_shards=n_shards,
        max_instances=settings.run_limits.max_transform_instances,
        mean_record_bytes=writer.mean_record_bytes,
    )
    reduce = ReducePlan.for_shards(n_shards, settings.reduce_batch_size, settings.map_concurrency)
    piece = {
        "run_id": run_id,
        "bucket": bucket,
        "key": key,
        "options": options.to_dict(),
        "n_prompts": n_prompts,
        "n_contrast_prompts": n_contrast,
        "input_uri": store.uri(layout.input_prefix(run_id)),
        "extract_uri": store.uri(layout.extract_prefix(run_id)),
        "steer_input_uri": steer_input_uri,
        "steer_output_uri": store.uri(layout.steer_output_prefix(run_id)),
        "n_shards": n_shards,
        "transform_instance_count": transform.instance_count,
        "transform": transform.to_state(),
        "reduce": reduce.to_state(store.uri(manifest_key)),
        "token_check": token_check,
        "names": layout.sagemaker_names(run_id),
        "has_steering": bool(options.steer),
    }
    store.put_json(layout.run_json_key(run_id), _run_json(event, piece, fmt))
    logger.info(
        "run %s: %d prompts (+%d contrast) in %d shards; tokens: %s",
        run_id,
        n_prompts,
        n_contrast,
        n_shards,
        token_check,
    )
    return piece


def _write_steer_input(store: ObjectStore, run_id: str, options: Any) -> str | None:
    """The steer transform's input URI (None without steering). For steer=auto the
    aggregate step writes the requests once it knows the features."""
    if not options.steer:
        return None
    steer_key = layout.steer_input_key(run_id)
    if not options.steer_auto:
        records = steer_records(options.steer_requests)
        store.put_bytes(steer_key, _jsonl(records), "application/jsonlines")
    return store.uri(steer_key)


def _run_json(event: dict[str, Any], piece: dict[str, Any], fmt: str) -> dict[str, Any]:
    """runs/<id>/run.json: what was validated, from where, when, by which version."""
    return {
        "run_id": piece["run_id"],
        "status": "running",
        "source": {
            "bucket": piece["bucket"],
            "key": piece["key"],
            "version_id": event.get("version_id"),
            "etag": event.get("etag"),
            "format": fmt,
        },
        "options": piece["options"],
        "n_prompts": piece["n_prompts"],
        "n_contrast_prompts": piece["n_contrast_prompts"],
        "n_shards": piece["n_shards"],
        "token_check": piece["token_check"],
        "names": piece["names"],
        "validated_at": now_iso(),
        "saeflow_version": saeflow_version,
    }
