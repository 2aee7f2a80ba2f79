"""What a run's size asks of AWS's engines: the batch transform and the map/reduce plan.

Pure planning from numbers validation knows (shards, the records' mean size) and the
deployment's settings (instance type, limits); the state machine reads the result from
``$.run.transform`` and ``$.run.reduce`` (docs/ARCHITECTURE.md, "Scale out").

Batch transform, per instance type (:data:`INSTANCE_SHAPES`):

- ``InstanceCount``: one instance per shard, at most ``MaxTransformInstances``. Batch
  transform hands whole S3 objects to instances (the ``ShardedByS3Key`` way; the transform
  API has no distribution field: it always shards by key), so shards are the unit.
- ``MaxConcurrentTransforms``: 2 on a GPU instance, so the next request is received and
  parsed while the GPU works on one (the worker serialises model calls), 1 on CPU.
- ``MaxPayloadInMB``: enough records per request for several full forward passes
  (:data:`PROMPTS_PER_REQUEST`), from the mean record size, within SageMaker's 1..100.
- the worker's ``SAEFLOW_MAX_BATCH_TOKENS``: padded tokens per forward pass, by GPU memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024
MAX_PAYLOAD_MB = 100  # SageMaker's ceiling for MaxPayloadInMB
PROMPTS_PER_REQUEST = {"gpu": 2048, "cpu": 64}
ENV_MAX_BATCH_TOKENS = "SAEFLOW_MAX_BATCH_TOKENS"
ENV_MAX_PAYLOAD_MB = "SAEFLOW_MAX_PAYLOAD_MB"  # the worker refuses larger requests (413)


@dataclass(frozen=True)
class InstanceShape:
    gpus: int
    gpu_memory_gib: int  # per GPU
    vcpus: int


# The SageMaker instance types a transform is likely to run on (on-demand list, us-east-1).
INSTANCE_SHAPES: dict[str, InstanceShape] = {
    "ml.g4dn.xlarge": InstanceShape(1, 16, 4),
    "ml.g4dn.2xlarge": InstanceShape(1, 16, 8),
    "ml.g5.xlarge": InstanceShape(1, 24, 4),
    "ml.g5.2xlarge": InstanceShape(1, 24, 8),
    "ml.g5.4xlarge": InstanceShape(1, 24, 16),
    "ml.g6.xlarge": InstanceShape(1, 24, 4),
    "ml.g6.2xlarge": InstanceShape(1, 24, 8),
    "ml.g6e.xlarge": InstanceShape(1, 48, 4),
    "ml.g6e.2xlarge": InstanceShape(1, 48, 8),
    "ml.p3.2xlarge": InstanceShape(1, 16, 8),
    "ml.p4d.24xlarge": InstanceShape(8, 40, 96),
    "ml.p5.48xlarge": InstanceShape(8, 80, 192),
    "ml.m5.xlarge": InstanceShape(0, 0, 4),
    "ml.m5.2xlarge": InstanceShape(0, 0, 8),
    "ml.c5.2xlarge": InstanceShape(0, 0, 8),
}
# An unknown type: plan as for a 24 GiB GPU (the default instance's class).
DEFAULT_SHAPE = InstanceShape(1, 24, 4)


def max_batch_tokens(shape: InstanceShape) -> int:
    """Padded tokens per forward pass: activations to the hook of a model up to a few
    billion parameters in bf16 fit in a quarter of the GPU's memory at these sizes."""
    if shape.gpus == 0:
        return 4096
    if shape.gpu_memory_gib >= 80:
        return 65_536
    if shape.gpu_memory_gib >= 40:
        return 32_768
    if shape.gpu_memory_gib >= 24:
        return 16_384
    return 8192


@dataclass(frozen=True)
class TransformPlan:
    instance_type: str
    instance_count: int
    max_concurrent_transforms: int
    max_payload_mb: int
    max_batch_tokens: int

    def to_state(self) -> dict[str, Any]:
        """``$.run.transform`` (the ASL's CreateTransformJob reads it)."""
        return {
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "max_concurrent_transforms": self.max_concurrent_transforms,
            "max_payload_mb": self.max_payload_mb,
            # Container environment values are strings.
            "environment": {
                ENV_MAX_BATCH_TOKENS: str(self.max_batch_tokens),
                ENV_MAX_PAYLOAD_MB: str(self.max_payload_mb),
            },
        }


def plan_transform(
    instance_type: str, *, n_shards: int, max_instances: int, mean_record_bytes: float
) -> TransformPlan:
    shape = INSTANCE_SHAPES.get(instance_type, DEFAULT_SHAPE)
    kind = "gpu" if shape.gpus else "cpu"
    payload = PROMPTS_PER_REQUEST[kind] * max(1.0, mean_record_bytes) / MIB
    return TransformPlan(
        instance_type=instance_type,
        instance_count=max(1, min(max_instances, n_shards)),
        max_concurrent_transforms=2 if shape.gpus else 1,
        max_payload_mb=max(1, min(MAX_PAYLOAD_MB, math.ceil(payload))),
        max_batch_tokens=max_batch_tokens(shape),
    )


@dataclass(frozen=True)
class ReducePlan:
    """How the partial aggregates of ``n_shards`` shards are merged."""

    n_shards: int
    batch_size: int
    concurrency: int

    @classmethod
    def for_shards(cls, n_shards: int, min_batch_size: int, concurrency: int) -> ReducePlan:
        """Batches of at least ``min_batch_size`` and at least sqrt(shards): both merge
        levels (a batch, then the batches) then read about sqrt(shards) partials, so the
        longest merge step grows with the square root of the prompts (10M prompts in
        10,000 shards: batches of 100, 100 batches)."""
        batch = max(min_batch_size, math.ceil(math.sqrt(max(1, n_shards))))
        return cls(n_shards, batch, concurrency)

    @property
    def batched(self) -> bool:
        """More shards than one merge takes: merge in batches first (MergePartials)."""
        return self.n_shards > self.batch_size

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_shards / self.batch_size) if self.batched else 0

    def to_state(self, manifest_uri: str) -> dict[str, Any]:
        """``$.run.reduce`` (the Distributed Maps and the aggregate step read it)."""
        bucket, _, key = manifest_uri.removeprefix("s3://").partition("/")
        return {
            "n_shards": self.n_shards,
            "batch_size": self.batch_size,
            "batched": self.batched,
            "n_batches": self.n_batches,
            "concurrency": self.concurrency,
            "manifest": {"bucket": bucket, "key": key},
        }
