"""ObjectStore over Amazon S3 (boto3), bound to one bucket.

The S3 client is injectable (tests pass a moto-backed one); a default client is built
only when none is given. Missing keys raise ``ObjectNotFound``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from saeflow.core.errors import ObjectNotFound

logger = logging.getLogger(__name__)

_NOT_FOUND = {"NoSuchKey", "NoSuchVersion", "404", "NotFound", "NoSuchBucket"}
# iter_lines reads this much at a time: small enough for a Lambda, large enough for speed.
_CHUNK_BYTES = 1024 * 1024
# Keys per ListObjectsV2 page (the S3 maximum); tests lower it to exercise paging.
_LIST_PAGE_SIZE = 1000


def _is_not_found(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND


class _Reader:
    """Only ``read``: s3transfer then streams it (multipart when large) without seeking.

    Some readers (a tarfile member in stream mode) claim to be seekable and then fail.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._fileobj = fileobj

    def read(self, size: int = -1) -> bytes:
        return self._fileobj.read(size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class S3Store:
    """:class:`saeflow.ports.ObjectStore` over one S3 bucket."""

    def __init__(self, bucket: str, s3_client: Any | None = None) -> None:
        if s3_client is None:
            import boto3  # only when the caller gave no client

            s3_client = boto3.client("s3")
        self._bucket = bucket
        self._s3 = s3_client

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def client(self) -> Any:
        return self._s3

    def uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    def for_bucket(self, bucket: str) -> S3Store:
        return S3Store(bucket, self._s3)

    def _get(self, key: str, version_id: str | None = None) -> Any:
        extra = {"VersionId": version_id} if version_id else {}
        try:
            return self._s3.get_object(Bucket=self._bucket, Key=key, **extra)["Body"]
        except ClientError as exc:
            if _is_not_found(exc):
                version = f" (version {version_id})" if version_id else ""
                raise ObjectNotFound(f"{self.uri(key)}{version} does not exist") from exc
            raise

    def get_bytes(self, key: str) -> bytes:
        body = self._get(key)
        try:
            return body.read()
        finally:
            body.close()

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=data, **extra)

    def put_bytes_if(self, key: str, data: bytes, *, etag: str | None) -> bool:
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=data, **condition)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            if etag is not None and _is_not_found(exc):
                return False
            raise
        return True

    def etag(self, key: str) -> str | None:
        try:
            return str(self._s3.head_object(Bucket=self._bucket, Key=key)["ETag"])
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_json(self, key: str, value: Any) -> None:
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.put_bytes(key, data, "application/json")

    def iter_lines(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        pending = b""
        # Split on b"\n" only (botocore's iter_lines also splits on a lone "\r").
        for chunk in self.iter_chunks(key, version_id):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.removesuffix(b"\r")
        if pending:
            yield pending.removesuffix(b"\r")

    def iter_chunks(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        body = self._get(key, version_id)
        try:
            yield from body.iter_chunks(_CHUNK_BYTES)
        finally:
            body.close()

    def open_stream(self, key: str) -> BinaryIO:
        return self._get(key)

    def upload_stream(self, key: str, fileobj: BinaryIO, content_type: str | None = None) -> None:
        extra = {"ExtraArgs": {"ContentType": content_type}} if content_type else {}
        self._s3.upload_fileobj(_Reader(fileobj), self._bucket, key, **extra)

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self._s3.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self._bucket, Prefix=prefix, PaginationConfig={"PageSize": _LIST_PAGE_SIZE}
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def copy(self, src_key: str, dst_key: str) -> None:
        try:
            # Managed copy: multipart for objects over 5 GB, one CopyObject below.
            self._s3.copy({"Bucket": self._bucket, "Key": src_key}, self._bucket, dst_key)
        except ClientError as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(f"{self.uri(src_key)} does not exist") from exc
            raise
