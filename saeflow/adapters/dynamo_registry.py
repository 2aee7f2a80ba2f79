"""The label registry and the runs' spend counters, in one DynamoDB table.

Keys: partition ``sae_key`` (S) = ``<weights sha256>|<model id>|<prompt version>``
(:attr:`saeflow.ports.RegistryKey.partition`), sort ``feature`` (N).

- A label: ``label_json`` (the registry entry as one JSON string, so floats need no
  Decimal and round-trip exactly) plus ``run_id``, ``labelled_at``, ``model_id``,
  ``prompt_version``, ``weights_sha256`` as plain attributes for people reading the table.
  Written with a condition: the first writer wins (``attribute_not_exists``), and a
  replacement names the run whose label it replaces.
- A run's spend: partition ``run|<run_id>``, sort -1, atomic counters ``spent_micro_usd``,
  ``requests``, ``input_tokens``, ``output_tokens``; ``expires_at`` (the table's TTL
  attribute) removes it after 30 days.

The client is injectable (tests pass a moto-backed one).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from saeflow.core.errors import LabelerError, LabelerThrottled
from saeflow.ports import RegistryKey

logger = logging.getLogger(__name__)

_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
}
_CONDITION_FAILED = "ConditionalCheckFailedException"
RUN_COUNTER_FEATURE = -1
RUN_COUNTER_TTL_S = 30 * 24 * 3600


class DynamoLabelRegistry:
    """:class:`saeflow.ports.LabelRegistry` and :class:`saeflow.ports.SpendLedger`."""

    def __init__(self, table_name: str, dynamodb_client: Any | None = None) -> None:
        if dynamodb_client is None:
            import boto3  # only when the caller gave no client

            dynamodb_client = boto3.client("dynamodb")
        self.table_name = table_name
        self._ddb = dynamodb_client

    @staticmethod
    def _key(partition: str, feature: int) -> dict[str, Any]:
        return {"sae_key": {"S": partition}, "feature": {"N": str(int(feature))}}

    def _fail(self, action: str, exc: Exception) -> Exception:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
        message = f"label registry {self.table_name}: {action} failed: {exc}"
        return LabelerThrottled(message) if code in _THROTTLED else LabelerError(message)

    # ------------------------------------------------------------------ labels

    def get(self, key: RegistryKey, feature: int) -> dict[str, Any] | None:
        try:
            item = self._ddb.get_item(
                TableName=self.table_name,
                Key=self._key(key.partition, feature),
                ConsistentRead=True,
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("get", exc) from exc
        if not item or "label_json" not in item:
            return None
        try:
            value = json.loads(item["label_json"]["S"])
        except (KeyError, ValueError):
            logger.warning("ignoring a malformed registry entry for %s/%s", key.partition, feature)
            return None
        return value if isinstance(value, dict) else None

    def put_first(
        self,
        key: RegistryKey,
        feature: int,
        label: dict[str, Any],
        *,
        replacing: str | None = None,
    ) -> dict[str, Any] | None:
        item = self._key(key.partition, feature)
        item["label_json"] = {"S": json.dumps(label, ensure_ascii=False, sort_keys=True)}
        for name in ("run_id", "labelled_at", "model_id", "prompt_version", "weights_sha256"):
            item[name] = {"S": str(label.get(name) or "")}
        if replacing is None:
            condition, values = "attribute_not_exists(feature)", None
        else:
            condition, values = "run_id = :replacing", {":replacing": {"S": replacing}}
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Item": item,
            "ConditionExpression": condition,
        }
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            self._ddb.put_item(**request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != _CONDITION_FAILED:
                raise self._fail("put", exc) from exc
            logger.info("registry %s/%s: another run wrote first", key.partition, feature)
            return self.get(key, feature) or {}
        except BotoCoreError as exc:
            raise self._fail("put", exc) from exc
        return None

    # ------------------------------------------------------------------ spend

    def _counter(self, run_id: str) -> dict[str, Any]:
        return self._key(f"run|{run_id}", RUN_COUNTER_FEATURE)

    def reserve(self, run_id: str, amount: int, cap: int) -> bool:
        if amount > cap:
            return False
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=self._counter(run_id),
                UpdateExpression="SET expires_at = if_not_exists(expires_at, :expires) "
                "ADD spent_micro_usd :amount",
                ConditionExpression="attribute_not_exists(spent_micro_usd) "
                "OR spent_micro_usd <= :room",
                ExpressionAttributeValues={
                    ":amount": {"N": str(int(amount))},
                    ":room": {"N": str(int(cap - amount))},
                    ":expires": {"N": str(int(time.time()) + RUN_COUNTER_TTL_S)},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == _CONDITION_FAILED:
                return False
            raise self._fail("reserve", exc) from exc
        except BotoCoreError as exc:
            raise self._fail("reserve", exc) from exc
        return True

    def settle(self, run_id: str, delta: int, usage: Mapping[str, int]) -> None:
        counters = {"spent_micro_usd": int(delta)}
        counters.update({name: int(usage.get(name, 0)) for name in _USAGE_COUNTERS})
        names = [name for name, value in counters.items() if value]
        if not names:
            return
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=self._counter(run_id),
                UpdateExpression="SET expires_at = if_not_exists(expires_at, :expires) ADD "
                + ", ".join(f"{name} :{name}" for name in names),
                ExpressionAttributeValues={
                    ":expires": {"N": str(int(time.time()) + RUN_COUNTER_TTL_S)},
                    **{f":{name}": {"N": str(counters[name])} for name in names},
                },
            )
        except (ClientError, BotoCoreError) as exc:
            # The request is done and paid for: losing its count must not lose its label.
            logger.warning("run %s: spend not recorded (%s)", run_id, exc)

    def spent(self, run_id: str) -> dict[str, int]:
        """The run's counters (for tests and the bench)."""
        try:
            item = self._ddb.get_item(
                TableName=self.table_name, Key=self._counter(run_id), ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("get", exc) from exc
        names = ("spent_micro_usd", *_USAGE_COUNTERS)
        return {name: int((item or {}).get(name, {}).get("N", 0)) for name in names}


_USAGE_COUNTERS = ("requests", "input_tokens", "output_tokens")
