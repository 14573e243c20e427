"""Command-line entry point: ``random-ltd <command> ...``.

Each subcommand lives in its own module under ``random_ltd.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (``args -> exit code``).
Modules listed here but not present yet are skipped, so commands can land independently.
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
    """argparse, but a usage error is one line (no usage dump), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="random-ltd",
        description="Random and layerwise token dropping (random-LTD) for transformer training.",
    )
    parser.add_argument("--version", action="version", version=f"random-ltd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"random_ltd.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"random_ltd.cli.{name}":
                continue
            raise
        module.register(subparsers)
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
