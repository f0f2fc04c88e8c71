"""The ``zoo`` command line (also ``python -m zoo``). Each sub-command lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func`` to a handler returning an exit code."""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser"]

#: sub-command modules under zoo.cli, in --help order
COMMAND_MODULES = ["models", "predict", "evaluate", "benchmark", "train", "data", "weights", "export"]

# exit codes scripts can rely on
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="Real-time detection transformers by name.")
    from zoo.version import __version__

    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"zoo.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # which options were given (zoo train --resume)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from zoo.engine.validate import UsageError
    from zoo.extras import MissingExtraError

    try:
        return int(args.func(args) or EXIT_OK)
    except UsageError as exc:
        print(f"zoo {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, KeyError, OSError, MissingExtraError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
