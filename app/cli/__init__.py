"""The `atelier` command: serve, manage models, generate and stylize locally or remotely.

Modules: `parser` (arguments; stylize's options come from StyleParams), `commands`
(generate, stylize), `local` (the server's services on a local pool), `remote` (HTTP and
the job event stream), `report` (progress bar, result line or JSON), `files` (inputs,
output), `admin` (serve, models), `errors` (exit codes).

Exit codes: 0 success, 1 the work failed (or the server could not do it), 2 bad usage or
input (also when the server refuses the input, 4xx), 3 the server could not be reached,
130 interrupted (the job is cancelled first).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from pydantic import ValidationError

    from app.errors import AtelierError
    from app.settings import Settings

__all__ = ["main"]

INTERRUPTED = 130  # also app.cli.errors.INTERRUPTED; here so that Ctrl-C while importing
# torch (a second or two) exits quietly too.


def _command(args: argparse.Namespace) -> Callable[[Settings, argparse.Namespace], int]:
    from app.cli import admin, commands

    if args.command == "models":
        return admin.models_list if args.models_command == "list" else admin.models_pull
    if args.command == "train":
        from app.training.cli import run

        return run
    return {"serve": admin.serve, "generate": commands.generate,
            "stylize": commands.stylize}[args.command]


def _message(exc: AtelierError, command: str) -> str:
    """The error's detail; a field the user set by an option is named as the option."""
    from app.cli.parser import GENERATE_OPTIONS, STYLE_OPTIONS
    from app.errors import InvalidField

    options = {"stylize": STYLE_OPTIONS, "generate": list(GENERATE_OPTIONS)}.get(command, [])
    if isinstance(exc, InvalidField) and exc.field in options:
        option = GENERATE_OPTIONS.get(exc.field) or "--" + exc.field.replace("_", "-")
        return f"{option}: {exc.message}"
    return exc.detail


def _settings_error(exc: ValidationError) -> str:
    return "; ".join(f"ATELIER_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors())


def _main(argv: list[str] | None) -> int:
    from pydantic import ValidationError

    from app.cli.errors import USAGE, CliError, exit_code
    from app.cli.parser import build_parser
    from app.errors import AtelierError
    from app.settings import Settings

    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: invalid setting: {_settings_error(exc)}", file=sys.stderr)
        return USAGE
    try:
        return _command(args)(settings, args)
    except CliError as exc:
        prefix = "" if exc.code == INTERRUPTED else "error: "
        print(f"{prefix}{exc}", file=sys.stderr)
        return exc.code
    except AtelierError as exc:
        print(f"error: {_message(exc, args.command)}", file=sys.stderr)
        return exit_code(exc.status)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
