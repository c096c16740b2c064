"""What every tool shares: `-c/-o` parsing and turning user errors into one line and exit 2."""

from __future__ import annotations

import argparse
import sys

from paddlegan_lite.errors import UserError


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("-c", "--config", required=required, help="YAML config file")
    parser.add_argument(
        "-o",
        "--override",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. -o train.epochs=2 data.root=~/data",
    )


def run_tool(main) -> None:
    """Call `main()`; a UserError becomes `error: <message>` on stderr and exit code 2."""
    from paddlegan_lite.logger import setup_console_logging

    setup_console_logging()
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
