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


@dataclass(frozen=True)
class RegistryKey:
    """Which label a registry entry is: the SAE's weights, the labeller and its prompts.

    ``weights_sha256`` is the sha256 of ``sae_weights.safetensors`` (for a ``saelens:``
    SAE, of its registry name: see ``saeflow.steps.resolve_sae``); ``model_id`` the
    labeller's model (``offline-heuristic`` for the offline rule); ``prompt_version``
    the version of the prompts, tools and example split that wrote the label.
    """

    weights_sha256: str
    model_id: str
    prompt_version: str

    @property
    def partition(self) -> str:
        """One string for the table's partition key."""
        return f"{self.weights_sha256}|{self.model_id}|{self.prompt_version}"


@runtime_checkable
class LabelRegistry(Protocol):
    """Labels stored per (SAE weights, labeller model, prompt version, feature).

    Writes are conditional, so that concurrent runs agree on one label: ``put_first``
    stores the label only when ``replacing`` is still what the registry holds (None:
    nothing at all) and otherwise returns what it holds instead.
    """

    def get(self, key: RegistryKey, feature: int) -> dict[str, Any] | None:
        """The stored label, or None."""
        ...

    def put_first(
        self,
        key: RegistryKey,
        feature: int,
        label: dict[str, Any],
        *,
        replacing: str | None = None,
    ) -> dict[str, Any] | None:
        """Store ``label`` unless another writer got there first.

        ``replacing`` is the ``run_id`` of the stored label this write may replace (a
        refresh, or a label that did not beat its baseline); None means the entry must
        not exist. Returns None when ``label`` was stored, else the label that won.
        """
        ...


@runtime_checkable
class SpendLedger(Protocol):
    """A run's LLM spend so far, shared by every Map item (atomic counters).

    Amounts are integer micro-USD. ``reserve`` adds ``amount`` only when the total stays
    within ``cap`` and says whether it did; ``settle`` adds the difference between what a
    request cost and what was reserved for it, and counts the request.
    """

    def reserve(self, run_id: str, amount: int, cap: int) -> bool: ...

    def settle(self, run_id: str, delta: int, usage: Mapping[str, int]) -> None: ...


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model must call: its answer is the tool's input, checked by its schema."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True)
class ToolRequest:
    """One request: shared (cacheable) system text, the per-feature data, a forced tool."""

    system: str
    prompt: str
    tool: ToolSpec
    max_tokens: int


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one request as the service reports them.

    ``input_tokens`` are the uncached input tokens; ``cache_read_tokens`` and
    ``cache_write_tokens`` the input tokens read from or written to the prompt cache.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class ToolAnswer:
    """The model's answer: the forced tool's input (None if it did not call the tool)."""

    tool_input: dict[str, Any] | None
    text: str
    model_id: str
    usage: TokenUsage
    stop_reason: str | None = None


@runtime_checkable
class Labeler(Protocol):
    """An LLM backend (Bedrock Converse, Anthropic API...) that answers one tool request.

    Prompt building, answer validation, scoring and the offline heuristic live in
    ``saeflow.core.labeling``; the backend only moves the request and the answer. It puts
    a cache point after ``system`` and forces ``tool``. Implementations raise
    ``LabelerThrottled`` when a retry can help and ``LabelerError`` otherwise.
    """

    @property
    def name(self) -> str:
        """Backend and model, e.g. ``bedrock:anthropic.claude-...`` (for label_source)."""
        ...

    @property
    def model_id(self) -> str:
        """The model the requests name (part of the registry key)."""
        ...

    def ask(self, request: ToolRequest) -> ToolAnswer:
        """Send ``request``; the answer carries the service's token usage."""
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
