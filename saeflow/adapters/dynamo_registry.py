"""LabelRegistry over a DynamoDB table: pk ``sae_id`` (S), sk ``feature`` (N).

The label record is stored as one JSON string attribute (``label_json``) rather than
a DynamoDB map, so floats need no Decimal conversion and the record round-trips
exactly. The client is injectable (tests pass a moto-backed one).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from saeflow.core.errors import LabelerError, LabelerThrottled

logger = logging.getLogger(__name__)

_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
}


class DynamoLabelRegistry:
    """:class:`saeflow.ports.LabelRegistry` over one DynamoDB table."""

    def __init__(self, table_name: str, dynamodb_client: Any | None = None) -> None:
        if dynamodb_client is None:
            import boto3  # only when the caller gave no client

            dynamodb_client = boto3.client("dynamodb")
        self.table_name = table_name
        self._ddb = dynamodb_client

    @staticmethod
    def _key(sae_id: str, feature: int) -> dict[str, Any]:
        return {"sae_id": {"S": sae_id}, "feature": {"N": str(int(feature))}}

    def _fail(self, action: str, exc: Exception) -> Exception:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
        message = f"label registry {self.table_name}: {action} failed: {exc}"
        return LabelerThrottled(message) if code in _THROTTLED else LabelerError(message)

    def get(self, sae_id: str, feature: int) -> dict[str, Any] | None:
        try:
            item = self._ddb.get_item(
                TableName=self.table_name, Key=self._key(sae_id, feature), ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("get", exc) from exc
        if not item or "label_json" not in item:
            return None
        try:
            value = json.loads(item["label_json"]["S"])
        except (KeyError, ValueError):
            logger.warning("ignoring a malformed registry entry for %s/%s", sae_id, feature)
            return None
        return value if isinstance(value, dict) else None

    def put(self, sae_id: str, feature: int, label: dict[str, Any]) -> None:
        item = self._key(sae_id, feature)
        item["label_json"] = {"S": json.dumps(label, ensure_ascii=False, sort_keys=True)}
        item["label_source"] = {"S": str(label.get("label_source") or "")}
        item["updated_at"] = {"S": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            self._ddb.put_item(TableName=self.table_name, Item=item)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("put", exc) from exc
