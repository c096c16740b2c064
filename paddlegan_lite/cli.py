"""What every tool shares: `-c/-o` parsing and turning user errors into one line and exit 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from paddlegan_lite.errors import UserError


def add_config_args(
    parser: argparse.ArgumentParser,
    required: bool = True,
    example: str = "train.epochs=2 data.root=~/data",
) -> None:
    parser.add_argument("-c", "--config", required=required, help="YAML config file")
    parser.add_argument(
        "-o",
        "--override",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"override config values, e.g. -o {example}; applied in order "
        "(a key given twice takes the later value); key={a: 1, b: 2} merges into that section",
    )


def add_moved_flags(parser: argparse.ArgumentParser, moved: dict[str, str]) -> None:
    """Flags that became config keys (flag name -> key), hidden from --help: each is refused
    with a UserError giving its new spelling, e.g. `--num_samples 100 is now -o
    eval.num_samples=100`, rather than argparse's bare "unrecognized arguments"."""

    class Moved(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            flag, key = self.option_strings[0], self.const
            raise UserError(f"{flag} {values} is now -o {key}={values}")

    for name, key in moved.items():
        parser.add_argument(f"--{name}", action=Moved, const=key, help=argparse.SUPPRESS)


def predictor_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a tool that runs an exported model, with its --model_dir; the tool adds its
    own flags, then `add_predictor_args`."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True, help="exported model folder")
    return parser


def add_predictor_args(parser: argparse.ArgumentParser) -> None:
    """The flags of a tool that runs an exported model: device, CPU threads, oneDNN."""
    parser.add_argument("--device", default="cpu", help="cpu (default), gpu or gpu:N")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU math threads (0: one, which keeps each seed's image bit-identical in any "
        "batch; more threads are faster, but their GEMM blocking follows the batch size)",
    )
    parser.add_argument(
        "--no_mkldnn", action="store_true", help="CPU: plain kernels instead of oneDNN"
    )


def run_tool(main) -> None:
    """Call `main()`; a UserError becomes `error: <message>` on stderr and exit code 2."""
    from paddlegan_lite.logger import setup_console_logging

    setup_console_logging()
    try:  # Ctrl-C leaves at once (training replaces this with its save-then-stop handler)
        signal.signal(signal.SIGINT, lambda signum, frame: exit_now(signum))
    except ValueError:
        pass  # not the main thread
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def exit_now(signum: int) -> None:
    """Leave at once with 128 + signum and one line. Not a KeyboardInterrupt: raised inside
    Paddle's C++ (a PyLayer backward, a kernel) it comes out as an OSError traceback. Checkpoints
    are renamed into place whole, so stopping at any instant loses only unsaved work."""
    sys.stdout.flush()
    print("interrupted" if signum == signal.SIGINT else "terminated", file=sys.stderr, flush=True)
    os._exit(128 + signum)


# ---------------------------------------------------------------------- output paths
# Checked before a tool's long work, so a bad path is refused at once rather than after an
# evaluation; the write itself still turns an OSError (disk full, a folder removed) into one line.
def check_output_dir(path, what: str) -> Path:
    """Refuse (UserError) a folder the tool could not create or write files in; nothing is made."""
    path = Path(path).expanduser()
    if os.path.exists(path) and not os.path.isdir(path):  # os.path: False, not raise, on EACCES
        raise UserError(f"{what} {path} is a file, not a folder")
    _check_writable_parent(path, what, path)
    return path


def check_output_file(path, suffixes: tuple[str, ...] | None, what: str) -> Path:
    """Refuse (UserError) a file path that is a folder, lacks one of `suffixes` (the format
    follows the suffix), or could not be written; nothing is made."""
    path = Path(path).expanduser()
    want = f"a file name ending in {' or '.join(suffixes)}" if suffixes else "a file name"
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder: give {want}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {path}: give {want}")
    if os.path.exists(path):
        try:
            with open(path, "ab"):  # append mode: the file is left as it is
                pass
        except OSError as exc:
            raise UserError(f"{what} {path}: cannot write it ({exc.strerror or exc})") from None
        return path
    _check_writable_parent(path.parent, what, path)
    return path


def _check_writable_parent(folder: Path, what: str, path: Path) -> None:
    """The nearest existing folder on the way to `folder` must take a new file (a real probe:
    permission bits say nothing for root, while /proc or a read-only mount still refuse)."""
    existing = Path(os.path.abspath(folder))
    while not os.path.exists(existing):
        existing = existing.parent
    if not os.path.isdir(existing):
        raise UserError(f"{what} {path}: cannot make a folder there, {existing} is a file")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=existing)
    except OSError as exc:
        raise UserError(
            f"{what} {path}: cannot write in {existing} ({exc.strerror or exc})"
        ) from None
    os.close(handle)
    os.unlink(probe)
