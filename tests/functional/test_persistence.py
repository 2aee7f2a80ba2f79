"""The embedded mode's state dir keeps the runs' tables for the user, without loading them
back into the next stack (infra/local/persistence.py)."""

from __future__ import annotations

import boto3

from infra.local.persistence import PersistentState


def test_tables_are_saved_for_the_user_but_not_restored(moto_aws, tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    s3.create_bucket(Bucket="saeflow-local")
    table = "tables/token_features/run_id=r-0123456789ab/shard-00000.parquet"
    for key in (table, "reports/r-0123456789ab/index.html", "runs/r-0123456789ab/run.json"):
        s3.put_object(Bucket="saeflow-local", Key=key, Body=b"data")
    state = PersistentState(tmp_path)
    persisted = {"bucket": "saeflow-local", "tables": []}
    state.save(s3, dynamodb, persisted)
    saved = tmp_path / "s3" / "saeflow-local"
    assert (saved / table).read_bytes() == b"data"
    assert not (saved / "runs").exists()  # scratch is not kept

    for item in s3.list_objects_v2(Bucket="saeflow-local")["Contents"]:  # a new stack: empty
        s3.delete_object(Bucket="saeflow-local", Key=item["Key"])
    assert state.restore(s3, dynamodb, persisted) == 1
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="saeflow-local").get("Contents", [])]
    assert keys == ["reports/r-0123456789ab/index.html"]
