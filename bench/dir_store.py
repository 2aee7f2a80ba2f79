"""An ObjectStore over a local folder (``<root>/<key>``), for measuring one step's own time
and memory: with moto every object would sit in the measuring process's memory too."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from saeflow.core.errors import ObjectNotFound

CHUNK = 1024 * 1024


class DirStore:
    """:class:`saeflow.ports.ObjectStore` over a folder (one "bucket")."""

    def __init__(self, root: Path, bucket: str = "bench") -> None:
        self.root = Path(root)
        self._bucket = bucket

    @property
    def bucket(self) -> str:
        return self._bucket

    def uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    def for_bucket(self, bucket: str) -> DirStore:
        if bucket != self._bucket:
            raise ObjectNotFound(f"the bench store has one bucket, not {bucket}")
        return self

    def _path(self, key: str) -> Path:
        return self.root / key

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"{self.uri(key)} does not exist")
        return path

    def get_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def etag(self, key: str) -> str | None:
        path = self._path(key)
        return str(path.stat().st_mtime_ns) if path.is_file() else None

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def put_bytes_if(self, key: str, data: bytes, *, etag: str | None) -> bool:
        if self.etag(key) != etag:
            return False
        self.put_bytes(key, data)
        return True

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_json(self, key: str, value: Any) -> None:
        self.put_bytes(key, json.dumps(value, ensure_ascii=False).encode())

    def iter_chunks(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        with self._existing(key).open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def iter_lines(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        pending = b""
        for chunk in self.iter_chunks(key, version_id):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.removesuffix(b"\r")
        if pending:
            yield pending.removesuffix(b"\r")

    def open_stream(self, key: str) -> BinaryIO:
        return self._existing(key).open("rb")

    def upload_stream(self, key: str, fileobj: BinaryIO, content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            shutil.copyfileobj(fileobj, out)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix.endswith("/") else self._path(prefix).parent
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix):
                yield key

    def copy(self, src_key: str, dst_key: str) -> None:
        self.put_bytes(dst_key, self.get_bytes(src_key))
