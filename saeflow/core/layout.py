"""Names: the run id, every S3 key, SageMaker job names, the SAE hash.

Every key saeflow reads or writes is built here (see docs/ARCHITECTURE.md,
"S3 keys"). Keys are relative to the one bucket; prefixes end with ``/``.

- ``run_id(bucket, key, version_id, etag)`` = ``<name>-<12 hex>`` where the hex is
  sha256 of ``bucket/key@<version_id or etag>``: the same upload always maps to the
  same run (EventBridge delivers at least once), a new upload of the same key to a new run.
- ``sae_hash(model, hook, train_options)`` = 16 hex of sha256 of canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

PROMPTS_PREFIX = "prompts/"
RUNS_PREFIX = "runs/"
SAES_PREFIX = "saes/"
REPORTS_PREFIX = "reports/"
SIDECAR_SUFFIX = ".options.json"
PROMPT_SUFFIXES = (".jsonl", ".txt", ".json")

_NAME_MAX = 40
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,40}-[0-9a-f]{12}$")


# --- identifiers ---------------------------------------------------------------------


def prompt_set_name(key: str) -> str:
    """The prompt-set stem of ``key``, sanitised to ``[A-Za-z0-9-]``, at most 40 chars."""
    base = key.rsplit("/", 1)[-1]
    for suffix in (SIDECAR_SUFFIX, *PROMPT_SUFFIXES):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9-]+", "-", base)
    name = re.sub(r"-{2,}", "-", name).strip("-")[:_NAME_MAX].strip("-")
    return name or "run"


def _version_token(version_id: str | None, etag: str | None) -> str:
    # Unversioned buckets report no version (or the literal "null"); then the ETag
    # identifies the upload. ETags arrive quoted from S3 APIs and unquoted from events.
    if version_id and version_id != "null":
        return version_id
    return (etag or "").strip('"')


def run_id(bucket: str, key: str, version_id: str | None, etag: str | None) -> str:
    """``<name>-<12 hex of sha256(bucket/key@version-or-etag)>``."""
    token = _version_token(version_id, etag)
    digest = hashlib.sha256(f"{bucket}/{key}@{token}".encode()).hexdigest()[:12]
    return f"{prompt_set_name(key)}-{digest}"


def is_run_id(value: str) -> bool:
    return bool(_RUN_ID_RE.match(value))


def run_hash(run_id_: str) -> str:
    """The 12-hex tail of a run id."""
    return run_id_.rsplit("-", 1)[-1]


def model_slug(model_id: str) -> str:
    """``HuggingFaceTB/SmolLM2`` -> ``HuggingFaceTB--SmolLM2`` (safe in keys and file names)."""
    return model_id.replace("/", "--")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: the form that hashes the same everywhere."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sae_hash(model: str, hook: str, train_options: dict[str, Any]) -> str:
    """16 hex of sha256 of the canonical JSON of (model, hook, train options)."""
    payload = canonical_json({"model": model, "hook": hook, "train": train_options})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def sagemaker_names(run_id_: str) -> dict[str, str]:
    """SageMaker resource names (<= 63 chars, ``[a-zA-Z0-9-]``) for one run."""
    base = f"sf-{run_hash(run_id_)}"
    return {
        "training_job": f"{base}-train",
        "model": f"{base}-model",
        "transform_job": f"{base}-extract",
        "steer_job": f"{base}-steer",
    }


def execution_name(run_id_: str) -> str:
    """The Step Functions execution name: the run id itself (dedups duplicate events)."""
    return run_id_


# --- URIs ---------------------------------------------------------------------------


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://b/k/e/y`` -> ``("b", "k/e/y")``; raises ValueError for anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


# --- prompts/ ---------------------------------------------------------------------------


def is_sidecar(key: str) -> bool:
    return key.endswith(SIDECAR_SUFFIX)


def sidecar_key(prompt_key: str) -> str:
    """``prompts/x.jsonl`` -> ``prompts/x.options.json``."""
    head, _, base = prompt_key.rpartition("/")
    for suffix in PROMPT_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return f"{head}/{base}{SIDECAR_SUFFIX}" if head else f"{base}{SIDECAR_SUFFIX}"


# --- runs/<run_id>/ -------------------------------------------------------------------


def run_prefix(run_id_: str) -> str:
    return f"{RUNS_PREFIX}{run_id_}/"


def run_json_key(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}run.json"


def input_prefix(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}input/"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.jsonl"


def input_shard_key(run_id_: str, index: int) -> str:
    return f"{input_prefix(run_id_)}{shard_name(index)}"


def extract_prefix(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}extract/"


def extract_output_key(run_id_: str, index: int) -> str:
    """Batch transform names each output ``<input file name>.out``."""
    return f"{extract_prefix(run_id_)}{shard_name(index)}.out"


def steer_input_key(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}steer/input.jsonl"


def steer_output_prefix(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}steer/out/"


def steer_output_key(run_id_: str) -> str:
    return f"{steer_output_prefix(run_id_)}input.jsonl.out"


def train_output_prefix(run_id_: str) -> str:
    """SageMaker OutputDataConfig.S3OutputPath (``<job>/output/model.tar.gz`` below it)."""
    return f"{run_prefix(run_id_)}train/"


def train_model_artifact_key(run_id_: str, job_name: str) -> str:
    return f"{train_output_prefix(run_id_)}{job_name}/output/model.tar.gz"


def sae_ref_prefix(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}sae-ref/"


def sae_ref_key(run_id_: str) -> str:
    return f"{sae_ref_prefix(run_id_)}saeflow_sae.json"


def sae_candidate_prefix(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}sae-candidate/"


def aggregate_key(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}aggregate.json"


# --- the map/reduce path (docs/ARCHITECTURE.md, "Scale out") ------------------------------


def shard_manifest_key(run_id_: str) -> str:
    """``[{"shard": 0}, ...]``: the Distributed Maps' ItemReader (outside ``input/``, which
    the batch transform reads whole)."""
    return f"{run_prefix(run_id_)}shards.json"


def partials_prefix(run_id_: str) -> str:
    return f"{run_prefix(run_id_)}partials/"


def shard_partial_key(run_id_: str, index: int) -> str:
    """The partial aggregate of one extraction shard (gzip JSON)."""
    return f"{partials_prefix(run_id_)}shard-{index:05d}.json.gz"


def batch_partials_prefix(run_id_: str) -> str:
    return f"{partials_prefix(run_id_)}batches/"


def batch_partial_key(run_id_: str, first_shard: int) -> str:
    """A batch of shard partials merged, named by its first shard (Step Functions decides
    the batches; the names only have to be distinct)."""
    return f"{batch_partials_prefix(run_id_)}from-{first_shard:05d}.json.gz"


def prompt_sample_key(run_id_: str) -> str:
    """The prompts the report shows (JSON Lines, compact extraction records)."""
    return f"{run_prefix(run_id_)}prompt_sample.jsonl"


def feature_bundle_key(run_id_: str, feature_id: int) -> str:
    return f"{run_prefix(run_id_)}features/{feature_id}.json"


def label_key(run_id_: str, feature_id: int) -> str:
    return f"{run_prefix(run_id_)}labels/{feature_id}.json"


def label_progress_key(run_id_: str, feature_id: int) -> str:
    """What a labelling attempt got so far (the explanation, the usage), for its retry."""
    return f"{run_prefix(run_id_)}labels/{feature_id}.progress.json"


def is_label_key(key: str) -> bool:
    """``runs/<id>/labels/<fid>.json`` (not a progress file)."""
    name = key.rsplit("/", 1)[-1]
    return "/labels/" in key and name.endswith(".json") and name[: -len(".json")].isdigit()


# --- saes/ ---------------------------------------------------------------------------------

SAE_FILES = ("cfg.json", "sae_weights.safetensors")
SAE_METRICS = "metrics.json"
SAE_FEATURE_DATA = "feature_data.jsonl"
SAE_FEATURE_SUMMARY = "feature_summary.json"
SAE_CORPUS_WINDOWS = "corpus_windows.jsonl"
SAE_MANIFEST = "saeflow_sae.json"
# sha256 of sae_weights.safetensors, written by register_sae before metrics.json: the
# label registry's key for the SAE (saeflow.steps.resolve_sae reads it).
SAE_WEIGHTS_SHA256 = "weights.sha256"
SAE_WEIGHTS = "sae_weights.safetensors"


def sae_id(model: str, hook: str, hash_: str) -> str:
    """Label-registry id of a trained SAE: ``saes/<model_slug>/<hook>/<sae_hash>``."""
    return f"{SAES_PREFIX}{model_slug(model)}/{hook}/{hash_}"


def sae_prefix(model: str, hook: str, hash_: str) -> str:
    """``saes/<model_slug>/<hook>/<sae_hash>/``."""
    return sae_id(model, hook, hash_) + "/"


CHECKPOINTS_PREFIX = "checkpoints/"


def sae_checkpoint_prefix(model: str, hook: str, hash_: str) -> str:
    """``checkpoints/<model_slug>/<hook>/<sae_hash>/``: training checkpoints of one SAE,
    shared by every run that trains it, so a retried run resumes where the last job
    stopped (kept out of ``saes/``: the serve job downloads that whole prefix)."""
    return CHECKPOINTS_PREFIX + sae_id(model, hook, hash_)[len(SAES_PREFIX) :] + "/"


# What a claim on registering one SAE is called (register_sae), inside the SAE's prefix.
SAE_REGISTRATION_CLAIM = "saeflow_registration.json"


# --- tables/: Parquet under the Glue tables of template.yaml -------------------------------

TABLES_PREFIX = "tables/"
TOKEN_FEATURES_TABLE = "token_features"
PROMPTS_TABLE = "prompts"


def table_prefix(table: str) -> str:
    """The Glue table's location (its partitions below it)."""
    return f"{TABLES_PREFIX}{table}/"


def table_partition_prefix(table: str, run_id_: str) -> str:
    """One run's partition (Hive style; the template's partition projection reads it)."""
    return f"{table_prefix(table)}run_id={run_id_}/"


def table_shard_key(table: str, run_id_: str, index: int) -> str:
    return f"{table_partition_prefix(table, run_id_)}shard-{index:05d}.parquet"


# --- reports/<run_id>/ --------------------------------------------------------------------


def report_prefix(run_id_: str) -> str:
    return f"{REPORTS_PREFIX}{run_id_}/"


def report_html_key(run_id_: str) -> str:
    return f"{report_prefix(run_id_)}index.html"


def report_json_key(run_id_: str) -> str:
    return f"{report_prefix(run_id_)}report.json"


def summary_key(run_id_: str) -> str:
    return f"{report_prefix(run_id_)}summary.md"


def error_key(run_id_: str) -> str:
    return f"{report_prefix(run_id_)}error.json"
