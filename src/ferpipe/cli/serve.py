"""`ferpipe serve`: MLflow's scoring server on the released model (or a registry URI).

The release is wrapped in the same pyfunc the registry holds (ferpipe.web.pyfunc), saved to a
temporary folder, and served by MLflow's own scoring app with a request-size limit in front:
too big is a 413, a picture over the pixel limit or with a broken header a 400 naming it.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ferpipe.errors import FerpipeError
from ferpipe.web.limits import MAX_PIXELS, MAX_REQUEST_PIXELS, MAX_ROWS, MAX_SECONDS

MAX_REQUEST_MB = 20.0
MAX_MEGAPIXELS = MAX_PIXELS / 1e6
EXAMPLE = """examples:
  ferpipe serve                                     # the release on http://127.0.0.1:5001
  ferpipe serve --model models:/fer-emotion@champion --port 5002
  curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
    -d "{\\"dataframe_records\\": [{\\"image\\": \\"$(base64 -w0 photo.jpg)\\"}]}\""""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="a REST scoring server (MLflow's) on the model: photos or face crops in",
        description="Serve the model with MLflow's scoring server: POST /invocations with rows of "
                    "'image' (a photo, base64) or 'face' (a 48x48 gray grid); GET /ping.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="a .onnx or .keras file, or models:/NAME@ALIAS (default: the released model)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    parser.add_argument("--max-request-mb", type=float, default=MAX_REQUEST_MB,
                        help=f"largest request body in MB; bigger is a 413 (default {MAX_REQUEST_MB:g})")
    parser.add_argument("--max-megapixels", type=float, default=MAX_MEGAPIXELS,
                        help=f"largest photo in megapixels; bigger is a 400 (default {MAX_MEGAPIXELS:g})")
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS,
                        help=f"most rows a request (default {MAX_ROWS}); more is a 429")
    parser.add_argument("--max-request-megapixels", type=float, default=MAX_REQUEST_PIXELS / 1e6,
                        help=f"most photo pixels a request, all rows together (default "
                             f"{MAX_REQUEST_PIXELS / 1e6:g}); more is a 429")
    parser.add_argument("--max-request-seconds", type=float, default=MAX_SECONDS,
                        help=f"work a request may take; past it the work stops with a 504 (default {MAX_SECONDS:g})")
    parser.set_defaults(func=run)
    return parser


def pyfunc_folder(model: str | None, dest: Path, max_pixels: int) -> Path:
    """Save the pyfunc of `model` (the release by default) under `dest`; a `models:/` URI is
    downloaded as registered."""
    import mlflow

    if model and model.startswith("models:/"):
        from ferpipe.inference import registry_uri

        mlflow.set_tracking_uri(registry_uri(model))
        return Path(mlflow.artifacts.download_artifacts(model, dst_path=str(dest)))
    from ferpipe.inference import load_classifier
    from ferpipe.web.pyfunc import save_pyfunc

    classifier = load_classifier(model)  # a bad path fails here, in one line
    return save_pyfunc(classifier.source, classifier.classes, dest / "model", max_pixels=max_pixels)


def run(args: argparse.Namespace) -> int:
    for flag in ("max_request_mb", "max_megapixels", "max_rows", "max_request_megapixels",
                 "max_request_seconds"):
        if getattr(args, flag) <= 0:
            raise FerpipeError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    # MLflow's INFO lines and download bar while the model is saved and loaded would be
    # third-party lines on the user's stderr; its warnings and errors still show.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        import mlflow  # noqa: F401
        import uvicorn
    except ImportError:
        raise FerpipeError("ferpipe serve needs MLflow's server: pip install 'ferpipe[serve]'") from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # after the import, which sets it
    from mlflow.pyfunc import load_model
    from mlflow.pyfunc.scoring_server import init

    from ferpipe.web.guard import limit_body

    with tempfile.TemporaryDirectory(prefix="ferpipe-serve-") as tmp:
        max_pixels = int(args.max_megapixels * 1e6)
        folder = pyfunc_folder(args.model, Path(tmp), max_pixels)
        # A registered model carries its own model_config; the flags override it.
        config = {"max_pixels": max_pixels, "max_rows": args.max_rows,
                  "max_request_pixels": int(args.max_request_megapixels * 1e6),
                  "max_seconds": args.max_request_seconds}
        app = limit_body(init(load_model(str(folder), model_config=config)), int(args.max_request_mb * 1e6),
                         "ferpipe serve --max-request-mb")
        print(f"ferpipe serve: http://{args.host}:{args.port}/invocations  (model: "
              f"{args.model or 'release'}; Ctrl-C stops it)", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
