"""Every prompt's length in tokens, checked at validation (before any GPU work).

Two tiers, so that the common case needs no tokenizer:

1. A bound: the model's tokenizer never makes more tokens than the prompt has UTF-8 bytes,
   plus one (byte-level BPE, as GPT-2, Llama 3, Qwen and SmolLM use: every token covers at
   least one byte; SentencePiece: at most one token a character or, by byte fallback, a
   byte, plus the word-start marker). BOS is not counted (as the worker counts). A prompt
   within the bound is within the limit.
2. A prompt over the bound is counted exactly with the model's own tokenizer (a
   :class:`saeflow.ports.TokenCounter`, in batches). Without one (a model whose tokenizer
   validation cannot fetch), it is left to the worker, which applies the same limit, and
   the run records how many prompts that was (``$.run.token_check``).

The one tokenizer family the bound does not cover is a normaliser that expands text (NFKC
turns some single characters into many); the worker's exact check still stops those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from saeflow.core.errors import PromptTooLong

COUNT_BATCH = 256


class TokenCounter(Protocol):
    """What :class:`TokenCheck` needs of a tokenizer (``saeflow.ports.TokenCounter``)."""

    @property
    def name(self) -> str: ...

    def count(self, texts: Sequence[str]) -> list[int]: ...


def token_upper_bound(text: str) -> int:
    """No tokenizer of the families above makes more tokens of ``text`` than this."""
    return len(text.encode("utf-8")) + 1


@dataclass
class TokenCheck:
    """Checks prompts as they stream by; :meth:`finish` checks what is still queued.

    ``counter_for`` gives the exact counter once the model is known (None: none here); it
    is asked once, on the first prompt over the bound.
    """

    limit: int
    counter_for: Callable[[], TokenCounter | None] | None = None
    batch: int = COUNT_BATCH
    within_bound: int = 0
    counted: int = 0
    unchecked: int = 0
    _pending: list[tuple[str, int | None, str]] = field(default_factory=list)
    _counter: Any = None
    _asked: bool = False

    def check(self, text: str, line: int | None, where: str = "") -> None:
        if token_upper_bound(text) <= self.limit:
            self.within_bound += 1
            return
        self._pending.append((text, line, where))
        if len(self._pending) >= self.batch:
            self._flush()

    def finish(self) -> dict[str, Any]:
        """Counts what is queued; returns the check's record for ``$.run.token_check``."""
        self._flush()
        return {
            "limit": self.limit,
            "within_bound": self.within_bound,
            "counted": self.counted,
            "unchecked": self.unchecked,
            "counter": getattr(self._counter, "name", None),
        }

    def _flush(self) -> None:
        if not self._pending:
            return
        counter = self._exact_counter()
        pending, self._pending = self._pending, []
        if counter is None:
            self.unchecked += len(pending)
            return
        counts = counter.count([text for text, _, _ in pending])
        self.counted += len(pending)
        for (_, line, where), n_tokens in zip(pending, counts, strict=True):
            if n_tokens > self.limit:
                prefix = f"{where}: " if where else ""
                raise PromptTooLong(
                    f"{prefix}prompt has {n_tokens} tokens ({counter.name}); the limit is "
                    f"{self.limit}",
                    line=line,
                )

    def _exact_counter(self) -> TokenCounter | None:
        if not self._asked:
            self._asked = True
            self._counter = self.counter_for() if self.counter_for is not None else None
        return self._counter
