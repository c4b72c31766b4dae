"""`ferpipe predict`: photos, folders and videos in, one JSON line per face out."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from ferpipe.detect import DETECTORS, MIN_FACE_PX
from ferpipe.files import atomic_path

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"}
EXAMPLE = """examples:
  ferpipe predict photo.jpg                 # {"file": ..., "face": 0, "box": [x, y, w, h], "emotion": ..., "probabilities": {...}}
  ferpipe predict photos/ --annotate out/   # every image and video in the folder; copies with boxes in out/
  ferpipe predict clip.mp4 --every 5        # every 5th frame; per-face lines with frame and time_s, then a summary
  ferpipe predict crops/ --no-detect        # images that are already face crops
  ferpipe predict photo.jpg --model models:/fer-emotion@champion

A picture without a face gives {"file": ..., "faces": 0}. A file that cannot be read is one
error line on stderr; the other files still run and the exit code is 1."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="emotions of the faces in photos, folders and videos (JSON lines)",
        description="Find the faces in each photo or video frame, crop each to 48x48 gray as the "
                    "training data was, and print one JSON line per face with its box, emotion and "
                    "the probability of each class.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files (jpg, png, bmp, gif, tif, webp), video files "
                             f"({' '.join(sorted(VIDEO_SUFFIXES))}) or folders of them (searched recursively)")
    parser.add_argument("--model", default=None,
                        help="a .keras file or models:/NAME@ALIAS (default: models/release/model.keras)")
    parser.add_argument("--no-detect", action="store_true",
                        help="classify each whole image as one face crop (no face detection)")
    parser.add_argument("--detector", choices=DETECTORS, default="auto",
                        help="face detector (default: auto = MTCNN if installed, else OpenCV Haar)")
    parser.add_argument("--min-face", type=int, default=MIN_FACE_PX, metavar="PX",
                        help=f"smallest face to look for, in pixels (default: {MIN_FACE_PX}); "
                             "40 halves the detection time, e.g. for video")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="video: analyse every Nth frame (default: 1, every frame)")
    parser.add_argument("--annotate", metavar="DIR", default=None,
                        help="write copies with boxes and labels drawn into DIR")
    parser.set_defaults(func=run)
    return parser


def expand(paths: list[str]) -> Iterator[tuple[Path, Path | None]]:
    """(file, the folder argument it was found in, or None for a file argument)."""
    from ferpipe.images import IMAGE_SUFFIXES  # imports PIL: not for `--help`

    media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in media
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            if not found:
                yield path, path  # reported as an error: a folder with nothing to do
            yield from ((p, path) for p in found)
        else:
            yield path, None


def annotated_path(out_dir: Path, path: Path, root: Path | None, suffix: str | None = None) -> Path:
    rel = path.relative_to(root) if root is not None else Path(path.name)
    dest = out_dir / rel
    return dest.with_suffix(suffix) if suffix else dest


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)  # flushed: a long video streams its lines


def do_image(path: Path, image: np.ndarray, classifier: Any, args: argparse.Namespace,
             root: Path | None) -> None:
    from ferpipe.predict import analyze_image, draw

    results = analyze_image(image, classifier, detect=not args.no_detect, detector=args.detector,
                            min_face_px=args.min_face)
    if not results:
        emit({"file": str(path), "faces": 0})
    for i, face in enumerate(results):
        emit({"file": str(path), "face": i, **face})
    if args.annotate:
        dest = annotated_path(Path(args.annotate), path, root)
        ok, data = cv2.imencode(dest.suffix or ".png", draw(image, results))
        if not ok:  # a format OpenCV reads but cannot write (e.g. GIF)
            dest = dest.with_suffix(".png")
            ok, data = cv2.imencode(".png", draw(image, results))
        with atomic_path(dest) as tmp:
            tmp.write_bytes(data.tobytes())


def do_video(path: Path, classifier: Any, args: argparse.Namespace, root: Path | None) -> None:
    from ferpipe.predict import analyze_video, draw

    with contextlib.ExitStack() as stack:
        on_frame, writer = None, {}
        if args.annotate:
            tmp = stack.enter_context(atomic_path(annotated_path(Path(args.annotate), path, root, ".mp4")))
            fps = (cv2.VideoCapture(str(path), cv2.CAP_FFMPEG).get(cv2.CAP_PROP_FPS) or 10.0) / args.every

            def on_frame(frame: np.ndarray, results: list[dict]) -> None:
                if "w" not in writer:
                    height, width = frame.shape[:2]
                    writer["w"] = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    stack.callback(writer["w"].release)
                writer["w"].write(draw(frame, results))

        for item in analyze_video(path, classifier, args.every, detector=args.detector,
                                  detect=not args.no_detect, on_frame=on_frame,
                                  min_face_px=args.min_face):
            emit({"file": str(path), **item})
        if "w" in writer:
            writer["w"].release()


def read_image(path: Path) -> np.ndarray | None:
    """BGR (EXIF orientation applied) or None when OpenCV cannot decode it as an image."""
    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)


def is_video(path: Path) -> bool:
    """Whether FFmpeg can decode a frame (OpenCV's warnings for other files are silenced)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        return capture.isOpened() and capture.grab()
    finally:
        capture.release()
        cv2.utils.logging.setLogLevel(level)


def run(args: argparse.Namespace) -> int:
    from ferpipe.detect import resolve
    from ferpipe.predict import load_classifier

    if args.every < 1 or args.min_face < 1:
        raise ValueError(f"--every and --min-face must be 1 or more, got {args.every}, {args.min_face}")
    resolve(args.detector)  # an unusable detector fails before the model loads
    classifier = load_classifier(args.model)
    failed = 0
    for path, root in expand(args.paths):
        try:
            if path.is_dir():
                raise ValueError(f"{path}: no image or video files in this folder")
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file or folder")
            if path.suffix.lower() in VIDEO_SUFFIXES:
                do_video(path, classifier, args, root)
                continue
            image = read_image(path)
            if image is not None:
                do_image(path, image, classifier, args, root)
            elif is_video(path):
                do_video(path, classifier, args, root)
            else:
                raise ValueError(f"{path}: not an image or a video OpenCV can read")
        except (OSError, ValueError) as err:
            print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr, flush=True)
            failed += 1
    return 1 if failed else 0
