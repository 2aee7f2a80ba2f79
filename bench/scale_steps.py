"""One Lambda step of the scale path in a process of its own, so that its time and peak
memory are its own: ``python -m bench.scale_steps STEP ROOT ...`` prints one JSON object
(``seconds``, ``peak_rss_mb`` and what the step returned). ROOT is a bench.dir_store folder.

Steps: ``validate KEY RUN_ID``, ``summarize RUN_ID SHARD``, ``merge RUN_ID FIRST COUNT``,
``final RUN_ID N_SHARDS BATCH``; and, to prepare inputs (not measured), ``copy-partial
RUN_ID SOURCE_KEY KIND EACH N_SHARDS START,START,...``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.dir_store import DirStore
from saeflow.core import layout
from saeflow.core.aggregation.partial import PartialAggregate
from saeflow.core.options import RunOptions
from saeflow.core.promptset import PromptLimits
from saeflow.core.run_policy import RunLimits


def peak_rss_mb() -> float:
    """This process's peak RSS since it started (VmHWM: unlike ru_maxrss, it starts afresh at
    exec, not at the parent's size when forked)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def step_validate(store: DirStore, key: str, run_id: str) -> dict[str, Any]:
    from saeflow.adapters.token_counter import tokenizer_for
    from saeflow.steps import validate

    settings = validate.ValidateSettings(
        limits=PromptLimits(max_prompts=10_000_000, max_file_bytes=4 * 1024**3),
        run_limits=RunLimits(max_transform_instances=100),
    )
    event = {"run_id": run_id, "bucket": store.bucket, "key": key, "overrides": {}}
    piece = validate.run(
        event,
        store=store,
        settings=settings,
        tokenizers=lambda model: tokenizer_for(model, offline=True),
    )
    return {k: piece[k] for k in ("n_prompts", "n_shards", "token_check", "transform", "reduce")}


def step_summarize(store: DirStore, run_id: str, shard: str) -> dict[str, Any]:
    from saeflow.adapters.parquet_tables import encode_parquet
    from saeflow.steps import summarize_shard

    event = {"shard": int(shard), "run_id": run_id, "bucket": store.bucket, "sample_size": 200}
    return summarize_shard.run(event, store=store, encode=encode_parquet)


def step_merge(store: DirStore, run_id: str, first: str, count: str) -> dict[str, Any]:
    from saeflow.steps import merge_partials

    items = [{"shard": int(first) + i} for i in range(int(count))]
    event = {"Items": items, "BatchInput": {"run_id": run_id, "bucket": store.bucket}}
    return merge_partials.run(event, store=store)


def step_final(store: DirStore, run_id: str, n_shards: str, batch: str) -> dict[str, Any]:
    """The aggregate step on the batch partials: final merge, summary, bundles, sample."""
    from saeflow.steps import aggregate

    options = RunOptions.from_dict({"label": {"backend": "none"}}).to_dict()
    plan = {"n_shards": int(n_shards), "batch_size": int(batch), "batched": True}
    sae_uri = store.uri("saes/synthetic/")
    event = {
        "run": {"run_id": run_id, "bucket": store.bucket, "options": options, "reduce": plan},
        "sae": {"uri": sae_uri, "sae_id": "saes/synthetic"},
    }
    piece = aggregate.run(event, store=store)
    body = store.get_json(piece["aggregate_key"])
    return {"n_prompts": body["n_prompts"], "n_features_seen": body["n_features_seen"]}


def copy_partial(
    store: DirStore, run_id: str, source_key: str, kind: str, each: str, n_shards: str, starts: str
) -> dict[str, Any]:
    """Copies of one stored partial, one per start in ``starts`` (comma-separated), each
    covering ``each`` shards from its start (never past ``n_shards``), stored as shard
    (``kind=shard``) or batch partials (``kind=batch``)."""
    original = PartialAggregate.from_bytes(store.get_bytes(source_key))
    firsts = [int(v) for v in starts.split(",")]
    for start in firsts:
        original.shards = list(range(start, min(start + int(each), int(n_shards))))
        key = (
            layout.shard_partial_key(run_id, start)
            if kind == "shard"
            else layout.batch_partial_key(run_id, start)
        )
        store.put_bytes(key, original.to_bytes())
    return {"copies": len(firsts)}


STEPS = {
    "validate": step_validate,
    "summarize": step_summarize,
    "merge": step_merge,
    "final": step_final,
    "copy-partial": copy_partial,
}


def main(argv: list[str]) -> int:
    name, root, *args = argv
    store = DirStore(Path(root))
    started = time.perf_counter()
    result = STEPS[name](store, *args)
    seconds = round(time.perf_counter() - started, 2)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
