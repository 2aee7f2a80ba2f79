"""Ports: the small interfaces the workflow steps need from the outside world.

Steps (``saeflow.steps.*``) receive these as keyword arguments and never import
boto3. Adapters in ``saeflow.adapters`` implement them over AWS (or a local folder
for tests); tests may pass any object with these methods.

Conventions shared by every implementation:

- An :class:`ObjectStore` is bound to ONE bucket (``.bucket``); keys are plain S3 keys
  (``runs/<id>/run.json``), never ``s3://`` URIs. ``for_bucket(name)`` gives a store
  for another bucket over the same client (e.g. an ``s3://other/...`` SAE).
- A missing key raises :class:`saeflow.core.errors.ObjectNotFound` (a ``KeyError``).
- JSON is UTF-8, written compactly with ``ensure_ascii=False``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, runtime_checkable


@runtime_checkable
class ObjectStore(Protocol):
    """Objects in one bucket."""

    @property
    def bucket(self) -> str:
        """The bucket this store reads and writes."""
        ...

    def uri(self, key: str) -> str:
        """``s3://<bucket>/<key>``."""
        ...

    def for_bucket(self, bucket: str) -> ObjectStore:
        """A store for another bucket, sharing this store's client."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object. Raises ObjectNotFound."""
        ...

    def etag(self, key: str) -> str | None:
        """The object's ETag, or None when it does not exist."""
        ...

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write (replace) an object."""
        ...

    def put_bytes_if(self, key: str, data: bytes, *, etag: str | None) -> bool:
        """Write only if the object is absent (``etag=None``) or still has ``etag``:
        a conditional write (S3 If-None-Match / If-Match). False when another writer won."""
        ...

    def get_json(self, key: str) -> Any:
        """Read and parse a JSON object. Raises ObjectNotFound."""
        ...

    def put_json(self, key: str, value: Any) -> None:
        """Write ``value`` as UTF-8 JSON (content type application/json)."""
        ...

    def iter_lines(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        """Stream the object (or one version of it) line by line (bounded memory).

        Yields raw ``bytes`` per line WITHOUT the line terminator (``\\n`` or ``\\r\\n``);
        decoding is the caller's job so it can report the line of a bad byte.
        A final empty line after a trailing newline is not yielded.
        Raises ObjectNotFound.
        """
        ...

    def iter_chunks(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        """Stream the object (or one version of it) in raw pieces of about a megabyte.

        Raises ObjectNotFound.
        """
        ...

    def open_stream(self, key: str) -> BinaryIO:
        """A readable binary file-like over the object (for tarfile 'r|gz' etc.).

        The caller closes it. Raises ObjectNotFound.
        """
        ...

    def upload_stream(self, key: str, fileobj: BinaryIO, content_type: str | None = None) -> None:
        """Write an object from a readable binary file-like (multipart when large)."""
        ...

    def exists(self, key: str) -> bool:
        """True when the key exists."""
        ...

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (paginated, sorted as S3 sorts them)."""
        ...

    def copy(self, src_key: str, dst_key: str) -> None:
        """Server-side copy within this bucket. Raises ObjectNotFound."""
        ...


@runtime_checkable
class LabelRegistry(Protocol):
    """Labels stored per (SAE, feature), reused across runs.

    ``sae_id`` is ``saes/<model_slug>/<hook>/<sae_hash>`` or ``saelens:<release>/<id>``
    (see ``saeflow.core.layout``). ``label`` is the JSON label record (whatever
    ``saeflow.core.labeling`` defines: label text, score, source...).
    """

    def get(self, sae_id: str, feature: int) -> dict[str, Any] | None:
        """The stored label, or None."""
        ...

    def put(self, sae_id: str, feature: int, label: dict[str, Any]) -> None:
        """Store (replace) the label."""
        ...


@dataclass(frozen=True)
class Completion:
    """One answer from an LLM labeler backend."""

    text: str
    model_id: str
    input_tokens: int
    output_tokens: int


@runtime_checkable
class Labeler(Protocol):
    """An LLM backend (Bedrock Converse, Anthropic API...) that answers one prompt.

    Prompt building, response parsing, scoring and the offline heuristic live in
    ``saeflow.core.labeling``; the backend only moves text. Implementations raise
    ``LabelerThrottled`` when a retry can help and ``LabelerError`` otherwise.
    """

    @property
    def name(self) -> str:
        """Backend and model, e.g. ``bedrock:anthropic.claude-...`` (for label_source)."""
        ...

    def complete(self, system: str, prompt: str, *, max_tokens: int) -> Completion:
        """Answer ``prompt`` under ``system``."""
        ...


@dataclass(frozen=True)
class PretrainedSae:
    """A pretrained SAELens SAE, located before any GPU work.

    ``release`` is a SAELens release name or a Hugging Face repo id (``org/name``);
    ``config`` is the SAE's ``cfg.json`` when it could be read (hook_name, d_sae...), else
    None (a registry release converted by SAELens at load time).
    """

    release: str
    sae_id: str
    repo_id: str
    folder: str
    config: dict[str, Any] | None = None


@runtime_checkable
class PretrainedSaeCatalog(Protocol):
    """Finds ``saelens:<release>/<sae_id>`` (SAELens's registry, the Hugging Face hub or
    its local cache). Raises :class:`saeflow.core.errors.SaeNotFound` for an SAE that does
    not exist or cannot be fetched where the run would load it."""

    def locate(self, ref: str) -> PretrainedSae: ...


@runtime_checkable
class WorkflowStarter(Protocol):
    """Starts one workflow execution for a run (``saeflow.adapters.sfn`` over Step Functions).

    Must be idempotent per ``run_input["run_id"]``: a second start for the same run id
    returns ``{"duplicate": True, ...}`` instead of starting another execution.
    Returns at least ``{"duplicate": bool, "execution_arn": str}``.
    """

    def __call__(self, run_input: dict[str, Any]) -> dict[str, Any]: ...


@runtime_checkable
class TableEncoder(Protocol):
    """Encodes columns as one file of a queryable table (``saeflow.adapters.parquet_tables.
    encode_parquet``: Parquet for the Glue tables). ``schema`` is ``[(column, Glue type)]``
    (:mod:`saeflow.core.tables`); ``sort_by`` is ``[(column, "ascending"|"descending")]``."""

    def __call__(
        self,
        columns: Mapping[str, Any],
        schema: Sequence[tuple[str, str]],
        sort_by: Sequence[tuple[str, str]] = (),
    ) -> bytes: ...


@runtime_checkable
class TokenCounter(Protocol):
    """A model's tokenizer, counting tokens the way the worker does (no BOS, no special
    tokens added): ``saeflow.adapters.token_counter``."""

    @property
    def name(self) -> str:
        """Which tokenizer (for messages), e.g. ``tokenizer of smollm2-135m-instruct``."""
        ...

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text."""
        ...
