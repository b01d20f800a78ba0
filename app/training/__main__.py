"""`python -m app.training train ...`: the `atelier train` command without the main CLI
(until it is wired in there, and for tests that need a process of their own)."""

from __future__ import annotations

import argparse
import sys

from app.settings import Settings
from app.training.cli import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.training")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(Settings(), args)
    return code


if __name__ == "__main__":
    sys.exit(main())
