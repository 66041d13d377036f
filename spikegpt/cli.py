"""The ``spikegpt`` command.

Each subcommand lives in a module exposing ``add_parser(subparsers)``, which registers its parser (or returns a
list of parsers, when one module holds several subcommands) with ``set_defaults(run=...)``; ``run(args)``
returns the exit status. Errors reach the user as one line; set ``SPIKEGPT_DEBUG=1`` for the traceback. A command
with ``--threads`` (``commands.common.add_threads_argument``) runs after torch's CPU thread count is set by the
policy of ``spikegpt.threads``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .progress import transformers_bars_on_terminal

COMMAND_MODULES = (
    "spikegpt.commands.generate",
    "spikegpt.commands.convert",
    "spikegpt.commands.energy",
    "spikegpt.commands.compare",
    "spikegpt.commands.quantize",
    "spikegpt.train.cli",
    "spikegpt.serve.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikegpt",
        description="Train, convert, run and serve SpikeGPT spiking language models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        registered = importlib.import_module(name).add_parser(subparsers)
        for command in registered if isinstance(registered, list) else [registered]:
            command.set_defaults(command_name=command.prog.split()[-1])
    return parser


def _version() -> str:
    from importlib.metadata import version

    return version("spikegpt")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "apply_threads", False):
            from .threads import apply_threads

            apply_threads(getattr(args, "threads", None))
        with transformers_bars_on_terminal():  # the bars of loading and saving models, in a log: cursor codes
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("spikegpt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last line of defence: one line, never a traceback, unless asked
        if os.environ.get("SPIKEGPT_DEBUG") == "1":
            raise
        from .errors import SpikeGPTError

        kind = "" if isinstance(e, SpikeGPTError) else f"{type(e).__name__}: "
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"spikegpt {args.command_name}: error: {kind}{message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
