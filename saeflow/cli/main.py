"""The ``saeflow`` command: run | local serve | local status | submit | options.

Exit status: 0 success, 2 invalid input (one line naming the problem, never a traceback),
1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from saeflow.cli.labeler_choice import LABEL_CHOICES
from saeflow.cli.outcome import EXIT_FAILED, EXIT_INVALID_INPUT, EXIT_OK, RunOutcome
from saeflow.core.errors import SaeflowError, is_invalid_input

LOG = logging.getLogger("saeflow.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saeflow",
        description="Prompt sets in, sparse-autoencoder interpretation reports out.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each part does")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="one run on this machine (the embedded mode, offline)",
        description="Run the workflow on FILE with the local stack; results go to DIR/<run_id>/.",
    )
    _add_run_arguments(run)
    run.add_argument(
        "--out", type=Path, default=Path("saeflow-runs"), help="results folder (./saeflow-runs)"
    )
    _add_state_dir(run)

    local = commands.add_parser("local", help="the local stack as a server")
    local_commands = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    serve = local_commands.add_parser(
        "serve",
        help="serve the local stack on 127.0.0.1 (uploads under prompts/ start runs)",
    )
    serve.add_argument("--port", type=int, default=4566, help="port on 127.0.0.1 (4566)")
    _add_state_dir(serve)
    status = local_commands.add_parser("status", help="list the runs of the local stack")
    _add_state_dir(status)

    submit = commands.add_parser(
        "submit",
        help="run against a deployed stack: upload, wait, download the report",
    )
    _add_run_arguments(submit)
    submit.add_argument("--stack", required=True, help="CloudFormation stack name")
    submit.add_argument(
        "--out", type=Path, default=Path("saeflow-runs"), help="results folder (./saeflow-runs)"
    )
    options = commands.add_parser("options", help="the run options (--schema: as JSON Schema)")
    options.add_argument(
        "--schema", action="store_true", help="print the JSON Schema of the run options"
    )
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="prompt set (.jsonl, .txt, .json)")
    parser.add_argument(
        "--label", choices=LABEL_CHOICES, help="labeller (default: offline unless credentials)"
    )
    parser.add_argument("--contrast", type=Path, metavar="FILE2", help="prompt set to compare")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a run option, e.g. --set train.training_tokens=30000 (repeatable)",
    )


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    from infra.local.persistence import default_state_dir

    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(os.environ),
        help="where the local bucket's SAEs, reports and labels persist",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return _dispatch(args)
    except SaeflowError as exc:
        code = EXIT_INVALID_INPUT if is_invalid_input(exc.name) else EXIT_FAILED
        _error(f"{exc.name}: {exc}")
        return code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_FAILED
    except Exception as exc:
        if args.verbose:
            LOG.exception("unexpected failure")
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from saeflow.cli.run_command import RunRequest, run_locally

        outcome = run_locally(
            RunRequest(
                file=args.file,
                out_dir=args.out,
                state_dir=args.state_dir,
                label=args.label,
                contrast=args.contrast,
                settings=tuple(args.settings),
                verbose=args.verbose,
            )
        )
        return _finish(outcome)
    if args.command == "submit":
        from saeflow.cli.submit_command import SubmitRequest, submit

        outcome = submit(
            SubmitRequest(
                file=args.file,
                stack=args.stack,
                out_dir=args.out,
                label=args.label,
                contrast=args.contrast,
                settings=tuple(args.settings),
            )
        )
        return _finish(outcome)
    if args.command == "options":
        return _print_options(schema=args.schema)
    from saeflow.cli import serve_command

    args.state_dir.mkdir(parents=True, exist_ok=True)
    if args.local_command == "serve":
        return serve_command.serve(args.state_dir, args.port, sys.stdout, verbose=args.verbose)
    return serve_command.status(args.state_dir, sys.stdout)


def _print_options(*, schema: bool) -> int:
    from saeflow.core.options import RunOptions

    if schema:
        sys.stdout.write(options_schema_text())
    else:
        sys.stdout.write(json.dumps(RunOptions().to_dict(), indent=2) + "\n")
    return EXIT_OK


def options_schema_text() -> str:
    """The run options' JSON Schema as ``saeflow options --schema`` prints it (and
    docs/options.schema.json holds it)."""
    from saeflow.core.options import RunOptions

    return json.dumps(RunOptions.json_schema(), indent=2, ensure_ascii=False) + "\n"


def _finish(outcome: RunOutcome) -> int:
    if outcome.exit_code == EXIT_OK:
        sys.stdout.write(f"{outcome.message}\n")
    else:
        _error(outcome.message)
    return outcome.exit_code


def _error(message: str) -> None:
    sys.stderr.write(f"saeflow: {' '.join(message.split())}\n")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # moto and werkzeug log every request; the workflow's own errors reach the user
        # through error.json and the one-line message.
        for name in ("werkzeug", "moto", "botocore", "urllib3"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
