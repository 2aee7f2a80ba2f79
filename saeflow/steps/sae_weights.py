"""The SAE's weights hash: the label registry's name for an SAE.

Labels belong to weights, not to the options that trained them (two trainings with the
same options give different weights). ``weights_sha256`` is the sha256 of
``sae_weights.safetensors``:

- register_sae hashes the file while it unpacks it and writes ``weights.sha256`` beside
  it (before ``metrics.json``, which marks a complete SAE);
- resolve_sae reads that file for a registered SAE, or streams the weights through
  sha256 for an ``s3://`` SAE directory that has none (bounded memory);
- a ``saelens:`` SAE is downloaded by the worker, never by a Lambda: its weights are
  named by the sha256 of ``saelens:<release>/<sae_id>`` (``weights_sha256_basis`` says
  so). A SAELens release pins its files, so the name stands for the weights.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, BinaryIO

from saeflow.core import layout
from saeflow.core.errors import ObjectNotFound, SaeNotFound
from saeflow.ports import ObjectStore

CHUNK_BYTES = 8 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
BASIS_FILE = "sha256 of sae_weights.safetensors"
BASIS_SAELENS = "sha256 of the SAELens release name (the worker downloads the weights)"


class HashingReader:
    """A readable binary file-like that hashes what passes through it."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._fileobj = fileobj
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._fileobj.read(size)
        self.sha256.update(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def stream_sha256(store: ObjectStore, key: str) -> str:
    """sha256 of one object, read in chunks."""
    digest = hashlib.sha256()
    stream = store.open_stream(key)
    try:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    finally:
        stream.close()
    return digest.hexdigest()


def recorded_sha256(store: ObjectStore, prefix: str) -> str | None:
    """The hash register_sae wrote under ``prefix`` (None when absent or malformed)."""
    try:
        text = store.get_bytes(prefix + layout.SAE_WEIGHTS_SHA256).decode("ascii", "replace")
    except ObjectNotFound:
        return None
    value = text.strip().lower()
    return value if _HEX64.match(value) else None


def directory_weights(store: ObjectStore, prefix: str) -> dict[str, Any]:
    """``{"weights_sha256", "weights_sha256_basis"}`` of the SAE directory at ``prefix``."""
    recorded = recorded_sha256(store, prefix)
    if recorded is None:
        try:
            recorded = stream_sha256(store, prefix + layout.SAE_WEIGHTS)
        except ObjectNotFound as exc:
            raise SaeNotFound(
                f"no {layout.SAE_WEIGHTS} at {store.uri(prefix)}: not an SAELens SAE directory"
            ) from exc
    return {"weights_sha256": recorded, "weights_sha256_basis": BASIS_FILE}


def saelens_weights(release: str, sae_id: str) -> dict[str, Any]:
    name = f"saelens:{release}/{sae_id}"
    return {
        "weights_sha256": hashlib.sha256(name.encode()).hexdigest(),
        "weights_sha256_basis": BASIS_SAELENS,
    }
