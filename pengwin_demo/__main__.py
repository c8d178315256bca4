"""Command line: ``python -m pengwin_demo <command> ...``.

Each subcommand lives in its own module in :mod:`pengwin_demo.cli` and defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. They are found at
start-up, so only commands that exist are listed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import __version__, cli
from .errors import exit_status


def _command_modules():
    for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        yield importlib.import_module(f"{cli.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pengwin_demo",
        description="Pelvic fracture segmentation in CT (PENGWIN labels, per-fragment meshes).",
    )
    parser.add_argument("--version", action="version", version=f"pengwin_demo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(_command_modules(), key=lambda m: m.NAME):
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return exit_status(lambda: args._run(args))


if __name__ == "__main__":
    sys.exit(main())
