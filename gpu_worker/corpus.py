"""Training text and the token windows cut from it.

Corpus specs (the ``corpus`` hyperparameter):

- ``default`` — the offline default corpus: the fortune cookie files of the Debian packages
  ``fortunes`` and ``fortunes-min`` (the data of fortune-mod, BSD ``fortune(6)``), installed
  under ``/usr/share/games/fortunes/``. About 2.6 MB of English quotations, jokes, poems
  and definitions (roughly 0.6M tokens); ``ascii-art`` is left out. License: the BSD license
  of the University of California (clause 3 deleted), with per-file notes, as stated in
  ``/usr/share/doc/fortunes/copyright``; install with ``apt-get install fortunes fortunes-min``.
- a local folder: every ``*.txt`` file (one document each) and ``*.jsonl`` file (one
  document per line, under the key ``"text"``), recursively, in sorted order.
- ``channel:<name>`` — a SageMaker input channel: the folder ``<channels_dir>/<name>/``
  (the caller passes ``channels_dir``; only the contract module knows ``/opt/ml``).
- ``hf:<dataset>`` — a Hugging Face dataset streamed with ``datasets`` (needs the hub: on
  AWS); its ``"text"`` column.

Documents are split deterministically into training and held-out sets by a hash of their
text, so metrics are always computed on text the SAE never saw. Windows are packed from the
token stream of each set: ``[BOS] + context_size - 1`` tokens, documents joined by the EOS
token. Position 0 and special tokens carry massive activations in the residual stream of
many models, so :func:`statistics_mask` excludes them from training and statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gpu_worker.models import hub_problem
from saeflow.core.errors import SaeflowError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Pictures made of characters teach an SAE nothing about language.
_FORTUNES_SKIPPED = frozenset({"ascii-art"})
HELDOUT_PERMILLE = 100  # 10% of documents are held out for evaluation
_SHUFFLE_BUFFER = 20_000
_TOKENIZE_BATCH = 256

Split = Literal["train", "heldout"]


class CorpusUnavailable(SaeflowError):
    """The training corpus cannot be read (missing folder or package, no hub access, no text)."""


@dataclass
class TokenWindows:
    """Token windows ``[n, context_size]`` and the mask of positions used for statistics."""

    tokens: torch.Tensor
    mask: torch.Tensor

    @property
    def n_tokens(self) -> int:
        """Positions that count (mask true)."""
        return int(self.mask.sum())


def iter_documents(spec: str, *, channels_dir: Path | None = None, seed: int = 0) -> Iterator[str]:
    """Documents of a corpus spec, shuffled deterministically (seeded, buffered)."""
    spec = spec.strip()
    if spec == "default":
        source: Iterable[str] = _fortunes_documents()
    elif spec.startswith("channel:"):
        name = spec.removeprefix("channel:").strip()
        if channels_dir is None:
            raise CorpusUnavailable(f"corpus {spec!r} needs the SageMaker input channels folder")
        source = _folder_documents(Path(channels_dir) / name, label=f"channel {name!r}")
    elif spec.startswith("hf:"):
        source = _hf_documents(spec.removeprefix("hf:").strip())
    else:
        source = _folder_documents(Path(spec), label=f"folder {spec!r}")
    yield from _buffered_shuffle(source, random.Random(seed))


def is_heldout(document: str) -> bool:
    """The deterministic train / held-out split (by a hash of the text, seed-independent)."""
    digest = hashlib.sha256(document.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < HELDOUT_PERMILLE


def split_documents(documents: Iterable[str], split: Split) -> Iterator[str]:
    """Keep the documents of one split."""
    want_heldout = split == "heldout"
    for document in documents:
        if is_heldout(document) == want_heldout:
            yield document


def special_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, padding, chat markers)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.add(int(value))
    return sorted(ids)


def statistics_mask(tokens: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """True where a position counts: not position 0 and not a special token."""
    import torch

    mask = ~torch.isin(tokens, torch.tensor(sorted(set(special_ids)), dtype=tokens.dtype))
    mask[..., 0] = False
    return mask


def iter_token_windows(
    documents: Iterable[str], tokenizer: Any, *, context_size: int
) -> Iterator[list[int]]:
    """Pack documents into windows of ``context_size`` tokens: BOS, then the token stream."""
    bos = getattr(tokenizer, "bos_token_id", None)
    separator = getattr(tokenizer, "eos_token_id", None)
    body = context_size - (1 if bos is not None else 0)
    if body < 1:
        raise ValueError(f"context_size {context_size} leaves no room after BOS")
    stream: list[int] = []
    batch: list[str] = []

    def flush() -> Iterator[list[int]]:
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            if not ids:
                continue
            stream.extend(ids)
            if separator is not None:
                stream.append(separator)
        batch.clear()
        while len(stream) >= body:
            window = stream[:body]
            del stream[:body]
            yield ([bos] if bos is not None else []) + window

    for document in documents:
        if document.strip():
            batch.append(document)
        if len(batch) >= _TOKENIZE_BATCH:
            yield from flush()
    if batch:
        yield from flush()


def collect_windows(
    spec: str,
    tokenizer: Any,
    *,
    context_size: int,
    n_tokens: int,
    split: Split,
    seed: int,
    channels_dir: Path | None = None,
    repeat: bool = True,
) -> TokenWindows:
    """Windows of one split until ``n_tokens`` positions count (statistics mask).

    With ``repeat`` a corpus smaller than the budget is cycled (with a warning); without it
    the windows stop where the text ends. No text at all raises :class:`CorpusUnavailable`.
    """
    import torch

    special = special_token_ids(tokenizer)
    rows: list[list[int]] = []
    counted = 0
    passes = 0
    while counted < n_tokens:
        produced = 0
        documents = split_documents(
            iter_documents(spec, channels_dir=channels_dir, seed=seed + passes), split
        )
        for window in iter_token_windows(documents, tokenizer, context_size=context_size):
            rows.append(window)
            produced += 1
            counted += sum(1 for i, t in enumerate(window) if i > 0 and t not in special)
            if counted >= n_tokens:
                break
        passes += 1
        if produced == 0:
            break
        if counted < n_tokens and not repeat:
            logger.warning(
                "corpus %r (%s) has only %d of the %d tokens asked for",
                spec,
                split,
                counted,
                n_tokens,
            )
            break
        if counted < n_tokens:
            logger.warning(
                "corpus %r (%s) ran out after %d tokens; repeating it (pass %d)",
                spec,
                split,
                counted,
                passes + 1,
            )
    if not rows:
        raise CorpusUnavailable(
            f"corpus {spec!r} gave no {split} text for windows of {context_size} tokens"
        )
    tokens = torch.tensor(rows, dtype=torch.long)
    return TokenWindows(tokens=tokens, mask=statistics_mask(tokens, special))


def _fortunes_documents() -> Iterator[str]:
    if not FORTUNES_DIR.is_dir():
        raise CorpusUnavailable(
            f"the default corpus needs the Debian fortunes files in {FORTUNES_DIR}: "
            "apt-get install fortunes fortunes-min"
        )
    files = sorted(
        path
        for path in FORTUNES_DIR.iterdir()
        if path.is_file() and not path.suffix and path.name not in _FORTUNES_SKIPPED
    )
    if not files:
        raise CorpusUnavailable(f"no fortune files in {FORTUNES_DIR}")
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for fortune in text.split("\n%\n"):
            fortune = fortune.strip().strip("%").strip()
            if fortune:
                yield fortune


def _folder_documents(folder: Path, *, label: str) -> Iterator[str]:
    if not folder.is_dir():
        raise CorpusUnavailable(f"corpus {label}: {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".txt", ".jsonl"})
    if not files:
        raise CorpusUnavailable(f"corpus {label}: no .txt or .jsonl files in {folder}")
    for path in files:
        if path.suffix == ".txt":
            yield path.read_text(encoding="utf-8", errors="replace")
            continue
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise CorpusUnavailable(
                        f"corpus {label}: {path.name} line {number} is not JSON: {exc}"
                    ) from exc
                text = record.get("text") if isinstance(record, dict) else None
                if isinstance(text, str):
                    yield text


def _hf_documents(dataset: str) -> Iterator[str]:
    if not dataset:
        raise CorpusUnavailable("corpus hf: needs a dataset id, e.g. hf:Skylion007/openwebtext")
    try:
        import datasets
    except ImportError as exc:
        raise CorpusUnavailable(
            "corpus hf: needs the datasets package (pip install datasets)"
        ) from exc
    problem = hub_problem()
    if problem is not None:
        raise CorpusUnavailable(
            f"cannot stream Hugging Face dataset {dataset!r}: {problem}; "
            "hf: corpora need hub access (on AWS)"
        )
    try:
        stream = datasets.load_dataset(dataset, split="train", streaming=True)
        iterator = iter(stream)
        first = next(iterator)
    except Exception as exc:  # offline or unknown dataset: hub errors come in many types
        raise CorpusUnavailable(
            f"cannot stream Hugging Face dataset {dataset!r} ({type(exc).__name__}: {exc}); "
            "hf: corpora need hub access (on AWS)"
        ) from exc
    for record in _chain_first(first, iterator):
        text = record.get("text") if isinstance(record, dict) else None
        if isinstance(text, str):
            yield text


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _buffered_shuffle(items: Iterable[str], rng: random.Random) -> Iterator[str]:
    """Shuffle a stream with a bounded buffer (exact for corpora smaller than the buffer)."""
    buffer: list[str] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= _SHUFFLE_BUFFER:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer
