"""The ``minisynth`` console command.

Each sub-command is a function ``cmd_<name>(args) -> int``. Errors a user can
fix (bad sizes, missing files, unknown kinds) are raised as ``ValueError``,
``TypeError`` or ``OSError`` and reported as one line on stderr with exit
status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minisynth",
        description="Synthesizer attention (Tay et al., 2020) from scratch in NumPy and Numba.",
    )
    parser.add_argument("--version", action="version", version=f"minisynth {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"minisynth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minisynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
