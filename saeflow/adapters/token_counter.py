"""TokenCounter over a model's ``tokenizer.json`` (the Rust ``tokenizers`` library).

Counts tokens as the worker does: ``add_special_tokens=False`` (no BOS), the same fast
tokenizer transformers loads. Where the tokenizer comes from (:func:`tokenizer_for`):

- the embedded default model (SmolLM2-135M-Instruct): shipped with saeflow
  (``saeflow/data/smollm2-135m-instruct.tokenizer.json.gz``, the tokenizer of the GGUF the
  worker loads), so validation counts exactly offline and in every Lambda;
- another Hugging Face model id: the local Hugging Face cache when offline
  (``HF_HUB_OFFLINE``), else the hub's resolve endpoint over HTTPS with the deployment's
  token (stdlib HTTP, as :mod:`saeflow.adapters.sae_catalog`).

None when no tokenizer can be had (no network, a gated model without a token...): the
bound of :mod:`saeflow.core.token_check` and the worker's own check remain.
"""

from __future__ import annotations

import gzip
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from saeflow.core.contract import DEFAULT_MODEL, canonical_model

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
PACKAGED = {
    DEFAULT_MODEL: Path(__file__).resolve().parents[1]
    / "data"
    / "smollm2-135m-instruct.tokenizer.json.gz"
}
HUB_TIMEOUT_S = 20
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024


class TokenizerCounter:
    """:class:`saeflow.ports.TokenCounter` over one tokenizer.json."""

    def __init__(self, tokenizer_json: str, name: str) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def count(self, texts: Sequence[str]) -> list[int]:
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encoded]


def tokenizer_for(
    model: str,
    *,
    offline: bool,
    cache_dir: str | None = None,
    token: str | None = None,
    endpoint: str = "https://huggingface.co",
) -> TokenizerCounter | None:
    """The model's tokenizer, or None when none can be found from here."""
    model = canonical_model(model)
    text = _cached_text(model, offline, cache_dir, token, endpoint.rstrip("/"))
    if text is None:
        logger.warning("no tokenizer for %s here: long prompts are left to the worker", model)
        return None
    return TokenizerCounter(text, f"tokenizer of {model}")


@cache
def _cached_text(
    model: str, offline: bool, cache_dir: str | None, token: str | None, endpoint: str
) -> str | None:
    """tokenizer.json's text (once per process and model)."""
    packaged = PACKAGED.get(model)
    if packaged is not None and packaged.is_file():
        return gzip.decompress(packaged.read_bytes()).decode("utf-8")
    if offline:
        return _from_local_cache(model, cache_dir)
    return _from_hub(model, token, endpoint)


def _from_local_cache(model: str, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # the Lambda layer has no hub client (and is never offline)
        return None
    found = try_to_load_from_cache(model, TOKENIZER_FILE, cache_dir=cache_dir)
    return Path(found).read_text(encoding="utf-8") if isinstance(found, str) else None


def _from_hub(model: str, token: str | None, endpoint: str) -> str | None:
    request = urllib.request.Request(
        f"{endpoint}/{model}/resolve/main/{TOKENIZER_FILE}",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S) as response:
            data = response.read(MAX_TOKENIZER_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:  # HTTPError included: gated, missing...
        logger.warning("cannot fetch %s of %s from the hub: %s", TOKENIZER_FILE, model, exc)
        return None
    if len(data) > MAX_TOKENIZER_BYTES:
        logger.warning("%s of %s is over %d bytes", TOKENIZER_FILE, model, MAX_TOKENIZER_BYTES)
        return None
    return data.decode("utf-8", errors="replace")
