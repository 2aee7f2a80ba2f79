"""S3 in and out of a local SageMaker job: listing, line records, folders and tarballs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def join_key(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}" if prefix else name


class JobFiles:
    """The S3 side of a job, over one boto3 S3 client."""

    def __init__(self, s3_client: Any) -> None:
        self._s3 = s3_client

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(k for k in keys if not k.endswith("/"))

    def read_lines(self, bucket: str, key: str) -> list[bytes]:
        body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return [line for line in body.splitlines() if line.strip()]

    def write_lines(self, bucket: str, key: str, lines: list[str]) -> None:
        body = "\n".join(lines) + ("\n" if lines else "")
        self._s3.put_object(Bucket=bucket, Key=key, Body=body.encode())

    def download_prefix(self, uri: str, target: Path) -> None:
        bucket, prefix = split_s3_uri(uri)
        target.mkdir(parents=True, exist_ok=True)
        for key in self.list_keys(bucket, prefix):
            relative = key[len(prefix) :].lstrip("/") or Path(key).name
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            self._s3.download_file(bucket, key, str(destination))

    def upload_folder(self, folder: Path, uri: str) -> None:
        bucket, prefix = split_s3_uri(uri)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = join_key(prefix, path.relative_to(folder).as_posix())
                self._s3.upload_file(str(path), bucket, key)

    def upload_tar(self, folder: Path, uri: str) -> None:
        """``folder`` as a .tar.gz object (a training job's model.tar.gz)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
        bucket, key = split_s3_uri(uri)
        self._s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())

    def extract_tar(self, uri: str, target: Path) -> None:
        bucket, key = split_s3_uri(uri)
        body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
            tar.extractall(target, filter="data")
