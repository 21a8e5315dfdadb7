"""The ``graphopt`` command: dispatch, logging, and exit codes.

Exit codes: 0 ok; 1 verification failed; 2 bad input or usage; 3 internal
error (with a reproducer's path when a pass crashed). Expected errors print a
one-paragraph message, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import traceback

from rich.markup import escape

from graphopt import __version__
from graphopt.cli import bench, compress, engine, explain, factorize, info, optimize, prune, quantize
from graphopt.cli.common import console, setup_logging
from graphopt.errors import GraphoptError, PassError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 2 with a one-line hint, as argparse does
        self.print_usage(sys.stderr)
        console.print(f"[red]error:[/] {message}")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="graphopt", description="Graph-level compiler and optimizer for ONNX models.")
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only; no progress or tables")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # -q/-v also after the subcommand; SUPPRESS keeps the top-level value when absent there.
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    flags.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def parser_class(*a, **kw):  # noqa: ANN002, ANN003, ANN202 - argparse's factory signature
        kw.setdefault("parents", []).append(flags)
        return _Parser(*a, **kw)

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)
    sub.required = True
    optimize.add_parsers(sub)
    info.add_parsers(sub)
    bench.add_parsers(sub)
    explain.add_parsers(sub)
    engine.add_parsers(sub)
    quantize.add_parsers(sub)
    factorize.add_parsers(sub)
    prune.add_parsers(sub)
    compress.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used as the console script)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # A short-lived process: objects alive now (imported modules) never need
    # the cyclic collector, whose full sweeps over them cost more than the
    # passes on small models.
    gc.freeze()
    restore_logging = setup_logging(args.quiet, args.verbose)
    try:
        return args.func(args)
    except PassError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        if e.reproducer:
            console.print(f"reproducer: {e.reproducer}")
        return e.exit_code
    except GraphoptError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")  # a message may hold brackets: 'graphopt[trt-rtx]'
        return e.exit_code
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - an internal error: keep the traceback in a file
        with tempfile.NamedTemporaryFile("w", prefix="graphopt-internal-", suffix=".txt", delete=False) as f:
            traceback.print_exc(file=f)
        console.print(f"[red]internal error:[/] {type(e).__name__}: {e}\ntraceback written to {f.name}; "
                      "please report it with the command you ran")
        return 3
    finally:
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
