"""Command-line entry point: ``random-ltd <command> ...``.

Each subcommand lives in its own module under ``random_ltd.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (``args -> exit code``).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from random_ltd import __version__

COMMAND_MODULES = ("plan", "train", "bench", "ablate")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2, no traceback."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit code 2, ending in ``hint``.
    Subcommands' parsers are of this class too (``add_parser(..., hint=...)``)."""

    def __init__(self, *args, hint: str = " (see --help)", **kwargs):
        super().__init__(*args, **kwargs)
        self.hint = hint

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{self.hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="random-ltd",
        description="Random and layerwise token dropping (random-LTD) for transformer training.",
    )
    parser.add_argument("--version", action="version", version=f"random-ltd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"random_ltd.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        print(f"random-ltd {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
