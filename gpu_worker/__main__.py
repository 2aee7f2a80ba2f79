"""``python -m gpu_worker train|serve|extract|steer``.

``train`` and ``serve`` are the SageMaker container contract (``docker run IMAGE train``);
``extract`` and ``steer`` are local conveniences that print JSON. The environment is read
here and nowhere else in the worker. Bad input ends with one line naming the error and
exit status 2, never a traceback.
"""

from __future__ import annotations

import os

# Progress goes to output/progress.json and the log, never a tqdm bar (SAETrainer draws one;
# SAELens has no option to turn it off). tqdm reads TQDM_* when it is imported, so this
# comes before anything imports it.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_worker import sagemaker_contract
from gpu_worker.records import InvalidRecord, parse_record
from saeflow.adapters.hf_token import export_hf_token
from saeflow.core.errors import SaeflowError, is_invalid_input

logger = logging.getLogger("gpu_worker")

EXIT_OK, EXIT_FAILURE, EXIT_INVALID_INPUT = 0, 1, 2


def _env_int(environ: dict[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise InvalidRecord(f"environment variable {name} must be an integer, got {raw!r}") from exc


def _env_flag(environ: dict[str, str], name: str) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise InvalidRecord(f"environment variable {name} must be 1 or 0, got {raw!r}")


def _cache_dir(environ: dict[str, str]) -> Path:
    return Path(environ.get("SAEFLOW_CACHE_DIR") or Path.home() / ".cache" / "saeflow")


def _device(requested: str) -> str:
    return sagemaker_contract.resolve_device(requested)


def _worker_settings(args: argparse.Namespace, environ: dict[str, str], sae_ref: str) -> Any:
    from gpu_worker.backend import WorkerSettings

    return WorkerSettings(
        sae_ref=sae_ref,
        model=getattr(args, "model", None) or environ.get("SAEFLOW_MODEL") or None,
        hook=getattr(args, "hook", None) or environ.get("SAEFLOW_HOOK") or None,
        features_per_token=getattr(args, "top_k", None) or _env_int(environ, "SAEFLOW_TOP_K", 8),
        max_prompt_tokens=getattr(args, "max_prompt_tokens", None)
        or _env_int(environ, "SAEFLOW_MAX_PROMPT_TOKENS", 512),
        device=_device(getattr(args, "device", None) or environ.get("SAEFLOW_DEVICE") or "auto"),
        cache_dir=_cache_dir(environ),
        hf_token=export_hf_token(environ),
        ce_loss=getattr(args, "ce_loss", False) or _env_flag(environ, "SAEFLOW_CE_LOSS"),
        max_batch_tokens=_env_int(environ, "SAEFLOW_MAX_BATCH_TOKENS", 0) or None,
    )


def cmd_train(args: argparse.Namespace, environ: dict[str, str]) -> int:
    paths = sagemaker_contract.ContainerPaths(
        sagemaker_contract.resolve_base_dir(args.base_dir, environ)
    )
    return sagemaker_contract.run_train(
        paths, cache_dir=_cache_dir(environ), hf_token=export_hf_token(environ)
    )


def cmd_serve(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from gpu_worker.backend import ModelBackend
    from gpu_worker.serve import ServeSettings, serve

    paths = sagemaker_contract.ContainerPaths(
        sagemaker_contract.resolve_base_dir(args.base_dir, environ)
    )
    port = args.port if args.port is not None else _env_int(environ, "SAGEMAKER_BIND_TO_PORT", 8080)
    settings = ServeSettings(
        host=args.host,
        port=port,
        max_payload_mb=_env_int(environ, "SAEFLOW_MAX_PAYLOAD_MB", 6),
    )
    worker = _worker_settings(args, environ, str(paths.model_dir))
    return serve(settings, lambda: ModelBackend.load(worker))


def _read_prompts(path: Path) -> list[str]:
    """A .txt file (one prompt a line) or JSON Lines with "prompt" or "text"."""
    try:
        lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8").split("\n")]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRecord(f"cannot read prompts file {str(path)!r}: {exc}") from exc
    prompts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = parse_record(line)
            except InvalidRecord as err:
                raise InvalidRecord(err.message, line=number) from err
            if not hasattr(record, "text"):
                raise InvalidRecord("expected a prompt record", line=number)
            prompts.append(record.text)  # type: ignore[union-attr]
        else:
            prompts.append(line)
    if not prompts:
        raise InvalidRecord(f"{str(path)!r} holds no prompts")
    return prompts


def cmd_extract(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from gpu_worker.backend import ModelBackend
    from gpu_worker.records import ExtractionRecord

    prompts = _read_prompts(Path(args.prompts))
    backend = ModelBackend.load(_worker_settings(args, environ, args.sae))
    records = [
        ExtractionRecord(prompt_index=i, id=str(i), set="main", text=text)
        for i, text in enumerate(prompts)
    ]
    for line in backend.extract(records):
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    return EXIT_OK


def cmd_steer(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from gpu_worker.backend import ModelBackend
    from gpu_worker.steering import SamplingSettings

    backend = ModelBackend.load(_worker_settings(args, environ, args.sae))
    sampling = SamplingSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        freq_penalty=args.freq_penalty,
        seed=args.seed,
    )
    result = backend.steerer.steer(args.prompt, args.feature, args.strength, sampling)
    output = {
        "prompt": result.prompt,
        "feature": result.feature,
        "hook": backend.hook.name,
        "sampling": dataclasses.asdict(sampling),
        "baseline": result.baseline,
        "steered": [{"strength": s, "text": t} for s, t in result.steered.items()],
    }
    sys.stdout.write(json.dumps(output, ensure_ascii=False, indent=2) + "\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gpu_worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_container_commands(commands)
    _add_local_commands(commands)
    return parser


def _add_container_commands(commands: Any) -> None:
    """``train`` and ``serve``: the SageMaker container contract."""
    train = commands.add_parser(
        "train", help="SageMaker training job: hyperparameters -> SAE in model/"
    )
    train.add_argument(
        "--base-dir", help="container base dir (default $SAEFLOW_SM_BASE_DIR or /opt/ml)"
    )
    train.set_defaults(handler=cmd_train)

    serve = commands.add_parser("serve", help="batch transform server: /ping and /invocations")
    serve.add_argument(
        "--base-dir", help="container base dir (default $SAEFLOW_SM_BASE_DIR or /opt/ml)"
    )
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, help="default $SAGEMAKER_BIND_TO_PORT or 8080")
    serve.add_argument("--device", help="auto | cpu | cuda (default $SAEFLOW_DEVICE or auto)")
    serve.set_defaults(handler=cmd_serve)


def _model_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--sae",
        required=True,
        help="SAE directory, sae-ref directory or saelens:<release>/<id>",
    )
    sub.add_argument(
        "--model", help="model id (default: from the SAE directory, else the embedded default)"
    )
    sub.add_argument("--hook", help="hook, e.g. blocks.15.hook_resid_post (default: from the SAE)")
    sub.add_argument("--device", help="auto | cpu | cuda")


def _add_local_commands(commands: Any) -> None:
    """``extract`` and ``steer``: local conveniences that print JSON."""
    extract = commands.add_parser(
        "extract", help="print per-token top features of a prompts file (JSON Lines)"
    )
    extract.add_argument("prompts", help=".txt (one prompt a line) or .jsonl with text/prompt")
    _model_args(extract)
    extract.add_argument("--top-k", type=int, help="features per token (default 8)")
    extract.add_argument(
        "--max-prompt-tokens", type=int, help="token limit per prompt (default 512)"
    )
    extract.add_argument(
        "--ce-loss",
        action="store_true",
        help="also report CE-loss sums with the SAE spliced in (default $SAEFLOW_CE_LOSS)",
    )
    extract.set_defaults(handler=cmd_extract)

    steer = commands.add_parser("steer", help="print baseline and steered generations (JSON)")
    _model_args(steer)
    steer.add_argument("--prompt", required=True)
    steer.add_argument("--feature", type=int, required=True)
    steer.add_argument("--strength", type=float, action="append", required=True, help="repeatable")
    steer.add_argument("--max-new-tokens", type=int, default=50)
    steer.add_argument("--temperature", type=float, default=0.5)
    steer.add_argument("--freq-penalty", type=float, default=2.0)
    steer.add_argument("--seed", type=int, default=0)
    steer.set_defaults(handler=cmd_steer)


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    env = dict(os.environ if environ is None else environ)
    try:
        return args.handler(args, env)
    except SaeflowError as err:
        print(f"{err.name}: {err}", file=sys.stderr)
        return (
            EXIT_INVALID_INPUT
            if is_invalid_input(err.name) or isinstance(err, InvalidRecord)
            else EXIT_FAILURE
        )
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
