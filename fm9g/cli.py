"""The ``fm9g`` console script.

Each subcommand is a module in :mod:`fm9g.commands` with ``NAME``, ``HELP``, ``ORDER``,
``add_arguments(parser)`` and ``run(args) -> int``; modules import heavy libraries inside ``run``
so that ``fm9g --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

from fm9g import __version__
from fm9g.core.errors import Fm9gError, os_error


def _command_modules():
    import fm9g.commands

    modules = [
        importlib.import_module(f"fm9g.commands.{info.name}")
        for info in pkgutil.iter_modules(fm9g.commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda module: (getattr(module, "ORDER", 100), module.NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm9g",
        description="Mix, tokenize and pack training data, and train causal LMs on it.",
    )
    parser.add_argument("--version", action="version", version=f"fm9g {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in _command_modules():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show full tracebacks on errors")
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _interrupt(signum: int, frame) -> None:
    """SIGTERM (what Slurm, ``kill`` and container stops send) ends a command as Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extras):
        args.overrides = [*args.overrides, *extras]  # KEY=VALUE after an option: still an override
    elif extras:
        parser.parse_args(argv)  # reports the unrecognized arguments, as argparse does
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # the reader went away (``fm9g ... | head``): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (Fm9gError, OSError) as error:
        if args.debug:
            traceback.print_exc()
        if isinstance(error, OSError):
            error = os_error(error)
        print(f"fm9g {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"fm9g {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence for users
        if args.debug:
            raise
        print(
            f"fm9g {args.command}: internal error: {type(error).__name__}: {error} "
            "(rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
