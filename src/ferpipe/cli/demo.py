"""`ferpipe demo`: a local web page over the model (ferpipe.web.demo)."""
from __future__ import annotations

import argparse
from typing import Any

from ferpipe.cli.common import add_model_args, recognizer_from

EXAMPLE = """example:
  ferpipe demo                                   # http://127.0.0.1:8000, the release model
  ferpipe demo --model models:/fer-emotion@champion --port 8080"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="a local web page: upload a photo, see the emotion of each face",
        description="Serve a small web page on this machine: upload a photo, get it back with a "
                    "box and label on each face and a probability bar per emotion.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only; "
                             "0.0.0.0 exposes the page to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ferpipe.errors import FerpipeError

    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError:
        raise FerpipeError("ferpipe demo needs its web server: pip install 'ferpipe[demo]'") from None

    from ferpipe.web.demo import create_app

    app = create_app(recognizer_from(args))
    print(f"ferpipe demo: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
