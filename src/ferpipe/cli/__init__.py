"""`ferpipe` (= `python -m ferpipe`): use the model on photos, videos and labelled folders.

Each command is a module with `add_parser(subparsers)` (which sets `func=run`) and
`run(args) -> exit code`; adding a command is one line in COMMANDS. Modules import
TensorFlow only inside `run`, so `ferpipe --help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from ferpipe import quiet  # noqa: F401  (start-up noise settings, before TensorFlow loads)
from ferpipe.errors import FerpipeError

# Command modules, in the order `ferpipe --help` lists them.
COMMANDS = ["ferpipe.cli.predict", "ferpipe.cli.score", "ferpipe.cli.explain", "ferpipe.cli.demo",
            "ferpipe.cli.serve"]



def use_one_interop_thread() -> None:
    """For face-at-a-time work: one inter-op thread cut a face from 4.7 to 3.8 ms here (no pool
    hand-offs for a chain of small ops); `score`'s 256-face batches lose 15% with it. TensorFlow
    reads this when it starts, so call it before TensorFlow is imported."""
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


EXAMPLE = """examples:
  ferpipe predict photo.jpg                   # one JSON line per face
  ferpipe predict photos/ clip.mp4 --annotate out/
  ferpipe score my_faces/                     # my_faces/<class>/*.jpg
  ferpipe explain photo.jpg --out gradcam/    # Grad-CAM: where the model looked
  ferpipe demo                                # web page at http://127.0.0.1:8000
  ferpipe <command> --help                    # details and examples of a command
  --debug before the command shows a traceback for errors"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferpipe", description="Facial-emotion recognition: find faces in photos and "
        "videos and say which emotion each shows; score the model on labelled images.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    from ferpipe import __version__

    parser.add_argument("--version", action="version", version=f"ferpipe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the command.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    if args.command != "score":
        use_one_interop_thread()
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ferpipe predict ... | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (FerpipeError, OSError) as err:  # a user's mistake: one line; --debug shows the rest
        if debug:
            traceback.print_exc()
        else:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"error: {message}", file=sys.stderr)
        return 1
    # Anything else is a bug: Python prints its traceback (exit 1), --debug or not.
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
