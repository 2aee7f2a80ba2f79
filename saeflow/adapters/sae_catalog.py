"""PretrainedSaeCatalog over SAELens's registry and the Hugging Face hub (or its cache).

``saelens:<release>/<sae_id>`` resolves the way SAELens resolves it:

- ``<release>`` a release of SAELens's ``pretrained_saes.yaml`` (e.g. the seed's Gemma
  Scope SAEs): the id must be one of its SAEs; the yaml names the repo and folder.
- otherwise ``<org>/<repo>/<sae_id>``: a Hugging Face repo holding SAELens-format folders
  (``<sae_id>/cfg.json`` + ``sae_weights.safetensors``), which is how SAELens loads SAEs
  that are not in its registry (an SAE trained by saeflow and published, for one). Its
  ``cfg.json`` is read, so the hook and width are checked before any GPU work.

Offline (``HF_HUB_OFFLINE``, the embedded mode) the files must be in the local Hugging Face
cache, where the worker will load them from (huggingface_hub reads the cache); online the
hub's resolve endpoint is asked over plain HTTPS (the Lambda layer has no hub client), and
an unreachable hub leaves the check to the worker. The registry file is data (no sae_lens
import, so no torch): the installed sae_lens package's, or the copy the Lambda layer
carries (``saeflow/data/pretrained_saes.yaml``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from saeflow.core.contract import SAE_CONFIG_FILE, split_saelens_ref
from saeflow.core.errors import SaeNotFound
from saeflow.ports import PretrainedSae

logger = logging.getLogger(__name__)

REGISTRY_FILE = "pretrained_saes.yaml"
_PACKAGED = Path(__file__).resolve().parents[1] / "data" / REGISTRY_FILE
WEIGHTS_FILE = "sae_weights.safetensors"
HUB_TIMEOUT_S = 10
MAX_CONFIG_BYTES = 1_000_000


@dataclass(frozen=True)
class Release:
    repo_id: str
    model: str
    saes: dict[str, str]  # sae id -> folder in the repo


def registry_file() -> Path | None:
    """The Lambda layer's copy, else the installed sae_lens package's (found, not imported)."""
    if _PACKAGED.is_file():
        return _PACKAGED
    spec = importlib.util.find_spec("sae_lens")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / REGISTRY_FILE
        if candidate.is_file():
            return candidate
    return None


@cache
def load_registry(path: Path | None) -> dict[str, Release]:
    """SAELens's releases (about 0.5 s to parse; once per process)."""
    if path is None:
        logger.warning("no SAELens registry file found: only repo-id releases resolve")
        return {}
    import yaml

    with path.open() as handle:
        data = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {
        name: Release(
            repo_id=str(entry["repo_id"]),
            model=str(entry.get("model", "")),
            saes={str(sae["id"]): str(sae["path"]) for sae in entry.get("saes", [])},
        )
        for name, entry in data.items()
    }


class HubSaeCatalog:
    """:class:`saeflow.ports.PretrainedSaeCatalog` over the registry and the hub."""

    def __init__(
        self,
        *,
        offline: bool,
        cache_dir: str | None = None,
        token: str | None = None,
        registry: dict[str, Release] | None = None,
        endpoint: str = "https://huggingface.co",
    ) -> None:
        self._offline = offline
        self._cache_dir = cache_dir
        self._token = token
        self._endpoint = endpoint.rstrip("/")
        self._registry = registry if registry is not None else load_registry(registry_file())

    def locate(self, ref: str) -> PretrainedSae:
        release, sae_id = split_saelens_ref(ref, self._registry)
        known = self._registry.get(release)
        if known is not None:
            if sae_id not in known.saes:
                raise SaeNotFound(f"SAELens release {release!r} has no SAE {sae_id!r}")
            folder = known.saes[sae_id]
            if self._offline and not self._folder_cached(known.repo_id, folder):
                raise SaeNotFound(
                    f"saelens:{release}/{sae_id} is not in the local Hugging Face cache "
                    f"(HF_HUB_OFFLINE is set): nothing of {known.repo_id}/{folder}"
                )
            return PretrainedSae(release, sae_id, known.repo_id, folder)
        if "/" not in release or not sae_id:
            raise SaeNotFound(
                f"SAELens has no release {release!r}; an SAE in a Hugging Face repo is "
                "named saelens:<org>/<repo>/<sae_id>"
            )
        config = self._read_config(release, sae_id)
        return PretrainedSae(release, sae_id, release, sae_id, config)

    def _read_config(self, repo_id: str, folder: str) -> dict[str, Any] | None:
        where = f"saelens:{repo_id}/{folder}"
        if self._offline:
            path = self._cached(repo_id, f"{folder}/{SAE_CONFIG_FILE}")
            if path is None or self._cached(repo_id, f"{folder}/{WEIGHTS_FILE}") is None:
                raise SaeNotFound(
                    f"{where} is not in the local Hugging Face cache (HF_HUB_OFFLINE is set): "
                    f"{folder}/{SAE_CONFIG_FILE} and {folder}/{WEIGHTS_FILE} of {repo_id}"
                )
            text: str | None = Path(path).read_text(errors="replace")
        else:
            text = self._fetch(repo_id, f"{folder}/{SAE_CONFIG_FILE}", where)
            if text is None:
                return None
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise SaeNotFound(f"{where}: {SAE_CONFIG_FILE} is not valid JSON: {exc}") from exc
        return config if isinstance(config, dict) else None

    def _folder_cached(self, repo_id: str, folder: str) -> bool:
        """Any file of ``folder`` in a cached snapshot (registry releases are converted by
        SAELens at load time, so their file names vary by release)."""
        from huggingface_hub import constants

        root = Path(self._cache_dir or constants.HF_HUB_CACHE)
        snapshots = root / f"models--{repo_id.replace('/', '--')}" / "snapshots"
        return any(p.is_file() for p in snapshots.glob(f"*/{folder}/*"))

    def _cached(self, repo_id: str, filename: str) -> str | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, cache_dir=self._cache_dir)
        return found if isinstance(found, str) else None

    def _fetch(self, repo_id: str, filename: str, where: str) -> str | None:
        """The file's text from the hub's resolve endpoint (stdlib HTTP: the Lambda layer
        carries no hub client); None when the hub cannot tell."""
        url = f"{self._endpoint}/{repo_id}/resolve/main/{urllib.parse.quote(filename)}"
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S) as response:
                return response.read(MAX_CONFIG_BYTES).decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            code = exc.headers.get("X-Error-Code", "") if exc.headers else ""
            if code == "GatedRepo":  # it exists; the worker's token may open it
                logger.warning("%s is gated; the worker will load it with its token", where)
                return None
            if exc.code in (401, 404):  # the hub answers 401 for a repo that does not exist
                raise SaeNotFound(f"{where}: {filename} does not exist on the hub") from exc
            logger.warning("cannot check %s on the hub (HTTP %s); the worker will", where, exc.code)
            return None
        except (urllib.error.URLError, OSError) as exc:  # unreachable: the worker may still
            logger.warning("cannot check %s on the hub (%s); the worker will", where, exc)
            return None
