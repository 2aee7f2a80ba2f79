"""Partial aggregates: what one extraction shard (or a merged batch of shards) contributes.

A :class:`PartialAggregate` is the unit of the map/reduce path (docs/ARCHITECTURE.md,
"Scale out"): the per-shard step folds one shard's records into one, a batch step merges
several, the aggregate step merges the rest and summarises. The single-Lambda path folds
every record into one. Both end in the same :func:`saeflow.steps.aggregate.finish`, so
merged partials equal one pass over the same records (up to the order float sums are
added in; the test is tests/unit/test_partial.py).

It holds:

- the :class:`FeatureAccumulator` (every statistic the report and the labellers need);
- a :class:`PromptSample`: the prompts the report shows, a uniform sample fixed by hashes
  of the prompts (not by their order), so it merges like the accumulator's samples;
- which shards it covers, so the last merge can prove that nothing is missing or doubled;
- the first per-record error (``PromptTooLong``...), kept rather than raised in the shard
  step so the run fails with that name after the map, whatever the map's error handling.

Stored gzip-compressed (:meth:`PartialAggregate.to_bytes`): a JSON line, versioned, then
the example windows as JSON lines.
"""

from __future__ import annotations

import gzip
import heapq
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from saeflow.core.aggregation.accumulator import (
    CONTRAST_SET,
    MAIN_SET,
    FeatureAccumulator,
    prompt_priority,
)
from saeflow.core.contract.extraction import compact_tokens, record_tokens
from saeflow.core.errors import ALL_ERRORS, ExtractionFailed, SaeflowError

FILE_FORMAT = "saeflow.partial-aggregate"
FILE_VERSION = 2
DEFAULT_SAMPLE_SIZE = 200
# gzip level 1: 12% bigger than level 6 at a third of its time (measured on a shard's
# partial); a partial is written once and read once or twice.
_GZIP_LEVEL = 1


@dataclass
class PromptSample:
    """The ``capacity`` prompts with the lowest priority (a uniform sample, order-free).

    Items are kept as compact prompt records: ``{"prompt_index", "id", "set", "text",
    "tokens", "features"}`` (:mod:`saeflow.core.contract.extraction`).
    """

    capacity: int = DEFAULT_SAMPLE_SIZE
    # min-heap of (-priority, prompt key, record): the top holds the highest priority kept
    heap: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    def offer(self, record: Mapping[str, Any]) -> None:
        """Keep the prompt if its priority is among the lowest seen (a checked record)."""
        set_name = CONTRAST_SET if record.get("set") == CONTRAST_SET else MAIN_SET
        priority = prompt_priority(record, set_name)
        key = f"{set_name}\x00{record.get('prompt_index', '')}\x00{record.get('id', '')}"
        if len(self.heap) >= self.capacity and (-priority, key) <= self.heap[0][:2]:
            return  # the common case once the sample is full: nothing decoded
        texts, features = record_tokens(record)
        item = {
            "prompt_index": record.get("prompt_index"),
            "id": record.get("id"),
            "set": set_name,
            "text": record.get("text") or "".join(texts),
            **compact_tokens(texts, features),
        }
        self._push((-priority, key, item))

    def _push(self, item: tuple[int, str, dict[str, Any]]) -> None:
        if len(self.heap) < self.capacity:
            heapq.heappush(self.heap, item)
        elif item[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, item)

    def merge(self, other: PromptSample) -> None:
        for item in other.heap:
            self._push(item)

    def records(self) -> list[dict[str, Any]]:
        """The sample in reading order: main set first, then by prompt index."""
        items = [item[2] for item in self.heap]
        return sorted(
            items,
            key=lambda r: (r["set"] != MAIN_SET, _index(r.get("prompt_index")), str(r.get("id"))),
        )


def _index(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


@dataclass
class PartialAggregate:
    """Accumulator + prompt sample + covered shards + the first per-record error."""

    accumulator: FeatureAccumulator = field(default_factory=FeatureAccumulator)
    sample: PromptSample = field(default_factory=PromptSample)
    shards: list[int] = field(default_factory=list)
    error: dict[str, Any] | None = None
    """``{"error": name, "message": str, "shard": int | None}``"""

    def add(self, record: Mapping[str, Any]) -> None:
        self.accumulator.add(record)  # checks the record (named errors)
        self.sample.offer(record)

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.add(record)

    def add_shard(self, shard: int, records: Iterable[Mapping[str, Any]]) -> None:
        """Fold one shard in; a per-record error is kept (see :meth:`raise_error`)."""
        try:
            self.add_all(records)
        except SaeflowError as exc:
            self._keep_error({"error": exc.name, "message": exc.message, "shard": shard})
        self.shards.append(shard)

    def merge(self, other: PartialAggregate) -> None:
        self.accumulator.merge(other.accumulator)
        self.sample.merge(other.sample)
        self.shards.extend(other.shards)
        if other.error is not None:
            self._keep_error(other.error)

    def _keep_error(self, error: dict[str, Any]) -> None:
        # The error of the lowest shard wins, so the outcome does not depend on merge order.
        if self.error is None or _shard_order(error) < _shard_order(self.error):
            self.error = dict(error)

    def raise_error(self) -> None:
        """Raise the kept per-record error under its own name (PromptTooLong...)."""
        if self.error is None:
            return
        error_class = ALL_ERRORS.get(self.error.get("error"), ExtractionFailed)
        raise error_class(str(self.error.get("message") or self.error.get("error")))

    def check_covers(self, n_shards: int) -> None:
        """Every shard ``0..n_shards-1`` exactly once, or ExtractionFailed naming the gap."""
        counts = Counter(self.shards)
        missing = [s for s in range(n_shards) if s not in counts]
        doubled = sorted(s for s, n in counts.items() if n > 1)
        outside = sorted(s for s in counts if not 0 <= s < n_shards)
        if missing or doubled or outside:
            raise ExtractionFailed(
                f"the partial aggregates do not cover the {n_shards} extraction shards once "
                f"each: missing {_shorten(missing)}, doubled {_shorten(doubled)}, "
                f"unknown {_shorten(outside)}"
            )

    # --- storage --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "shards": sorted(self.shards),
            "error": self.error,
            "sample": {
                "capacity": self.sample.capacity,
                "items": [list(item) for item in self.sample.heap],
            },
            "accumulator": self.accumulator.to_partial(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartialAggregate:
        if data.get("format") != FILE_FORMAT or data.get("version") != FILE_VERSION:
            raise ValueError(
                f"not a {FILE_FORMAT} version {FILE_VERSION} file: "
                f"format={data.get('format')!r} version={data.get('version')!r}"
            )
        sample = PromptSample(int(data["sample"]["capacity"]))
        # Stored in heap order: still a valid heap.
        sample.heap = [(int(a), str(b), dict(c)) for a, b, c in data["sample"]["items"]]
        return cls(
            accumulator=FeatureAccumulator.from_partial(data["accumulator"]),
            sample=sample,
            shards=[int(s) for s in data["shards"]],
            error=data.get("error"),
        )

    def to_bytes(self) -> bytes:
        """gzip of one JSON line (:meth:`to_json`, example windows replaced by their line
        numbers) followed by the windows' JSON, one a line: the windows, most of the bytes,
        are then read back by splitting lines, without JSON string escapes."""
        data = self.to_json()
        windows: list[str] = []
        for feature in data["accumulator"]["features"].values():
            for heap in (feature["top"], feature["sample"]):
                for item in heap:
                    windows.append(item[2])
                    item[2] = len(windows) - 1
        header = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        text = "\n".join([header, *windows])
        return gzip.compress(text.encode("utf-8"), compresslevel=_GZIP_LEVEL, mtime=0)

    @classmethod
    def from_bytes(cls, data: bytes) -> PartialAggregate:
        header, *windows = gzip.decompress(data).decode("utf-8").split("\n")
        document = json.loads(header)
        for feature in document.get("accumulator", {}).get("features", {}).values():
            for heap in (feature["top"], feature["sample"]):
                for item in heap:
                    item[2] = windows[item[2]]
        return cls.from_json(document)


def _shard_order(error: Mapping[str, Any]) -> tuple[int, str]:
    shard = error.get("shard")
    return (shard if isinstance(shard, int) else 1 << 62, str(error.get("message")))


def _shorten(values: list[int], limit: int = 10) -> str:
    if not values:
        return "none"
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
