"""`ferpipe explain`: Grad-CAM overlays, one PNG per face, for the faces `predict` finds."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ferpipe.cli.common import add_model_args, recognizer_from, report
from ferpipe.errors import FerpipeError

EXAMPLE = """example:
  ferpipe explain photo.jpg --out gradcam/           # every detected face
  ferpipe explain face_crop.png --no-detect          # an image that is already a face crop
  ferpipe explain photo.jpg --model models:/fer-emotion@champion"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "explain", help="Grad-CAM heat maps: where the model looked, for each face",
        description="Write one PNG per face: the face crop the model saw, enlarged, with its "
                    "Grad-CAM map overlaid and the predicted emotion in the file name. The faces "
                    "and probabilities are those `ferpipe predict` gives.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (jpg, png, ...)")
    parser.add_argument("--out", default="gradcam", help="folder for the overlays (default: gradcam)")
    add_model_args(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Overlays for every face of every image; a bad image is one line and the others go on."""
    import cv2

    from ferpipe.explain import overlay
    from ferpipe.files import atomic_path

    recognizer = recognizer_from(args)
    out, failed = Path(args.out), 0
    for name in args.images:
        try:
            explained = recognizer.explain(Path(name))
        except (OSError, FerpipeError) as err:  # a bug elsewhere keeps its traceback
            report(err)
            failed += 1
            continue
        if not explained:
            print(f"{name}: no face found (use --no-detect for an image that is a face crop)")
        for i, item in enumerate(explained):
            face = item.face
            dest = out / f"{Path(name).stem}_face{i}_{face.emotion}.png"
            with atomic_path(dest) as tmp:
                ok, png = cv2.imencode(".png", overlay(item.crop, item.heatmap))
                if not ok:
                    raise OSError(f"{dest}: could not encode PNG")
                tmp.write_bytes(png.tobytes())
            print(f"{name}: face {i} box {list(face.box)} {face.emotion} {face.score:.2f} "
                  f"({face.found}) -> {dest}")
    return 1 if failed else 0
