"""`ferpipe predict`: photos, folders and videos in, one JSON line per face out."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ferpipe.cli.common import add_model_args, recognizer_from, report
from ferpipe.errors import FerpipeError
from ferpipe.imageio import IMAGE_SUFFIXES, VIDEO_SUFFIXES

EXAMPLE = """examples:
  ferpipe predict photo.jpg                 # {"file": ..., "face": 0, "box": [x, y, w, h], "emotion": ..., "probabilities": {...}, "found": "detected"}
  ferpipe predict photos/ --annotate out/   # every image and video in the folder; copies with boxes in out/
  ferpipe predict clip.mp4 --every 5        # every 5th frame; per-face lines with frame, time_s and person, then a summary
  ferpipe predict clip.mp4 --timeline out/  # out/clip.timeline.csv and .png: each person's emotions over time
  ferpipe predict crops/ --no-detect        # images that are already face crops
  ferpipe predict photo.jpg --model models:/fer-emotion@champion

A picture without a face gives {"file": ..., "faces": 0}; a near-square one is taken as a face
crop instead ("found": "whole_image"; --no-whole-image turns that off). A file that cannot be
read is one error line on stderr; the other files still run and the exit code is 1."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="emotions of the faces in photos, folders and videos (JSON lines)",
        description="Find the faces in each photo or video frame, crop each to the model's gray "
                    "input as the training data was, and print one JSON line per face with its box, "
                    "emotion and the probability of each class.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files (jpg, png, bmp, gif, tif, webp), video files "
                             f"({' '.join(sorted(VIDEO_SUFFIXES))}) or folders of them (searched recursively)")
    add_model_args(parser)
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="video: analyse every Nth frame (default: 1, every frame)")
    parser.add_argument("--smooth", type=float, default=0.5, metavar="SECONDS",
                        help="video: average each person's emotions over this window (default 0.5; 0: off)")
    parser.add_argument("--timeline", metavar="DIR", default=None,
                        help="video: write DIR/<name>.timeline.csv (time, person, emotion, probabilities) "
                             "and DIR/<name>.timeline.png (each person's emotions over the clip)")
    parser.add_argument("--annotate", metavar="DIR", default=None,
                        help="write copies with boxes and labels drawn into DIR (never over an input)")
    parser.set_defaults(func=run)
    return parser


def expand(paths: list[str]) -> Iterator[tuple[Path, Path | None]]:
    """(file, the folder argument it was found in, or None for a file argument)."""
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


class Annotations:
    """Where annotated copies go: never onto an input, never two outputs onto one path."""

    def __init__(self, out_dir: str, inputs: list[str]) -> None:
        self.out_dir = Path(out_dir).resolve()
        for name in inputs:
            src = Path(name).resolve()
            if src.is_dir() and (self.out_dir == src or src in self.out_dir.parents):
                raise FerpipeError(f"--annotate {out_dir}: inside the input folder {name}; "
                                 "choose a folder outside it")
        self.taken: set[Path] = set()

    def path(self, path: Path, root: Path | None, suffix: str | None = None) -> Path:
        rel = path.relative_to(root) if root is not None else Path(path.name)
        dest = self.out_dir / (rel.with_suffix(suffix) if suffix else rel)
        stem, n = dest.with_suffix(""), 1
        while dest in self.taken or dest == path.resolve():
            dest = stem.with_name(f"{stem.name}-{n}").with_suffix(dest.suffix)  # same-named inputs
            n += 1
        self.taken.add(dest)
        return dest


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)  # flushed: a long video streams its lines


def do_image(path: Path, recognizer: Any, annotations: Annotations | None, root: Path | None) -> None:
    import cv2

    from ferpipe.draw import draw_faces
    from ferpipe.files import atomic_path

    image = recognizer.read(path)
    faces = recognizer.analyze(image)
    if not faces:
        hint = ({"hint": "no face found in this small picture; if it is a face crop, use --no-detect"}
                if max(image.shape[:2]) <= 96 else {})
        emit({"file": str(path), "faces": 0, **hint})
    for i, face in enumerate(faces):
        emit({"file": str(path), "face": i, **face.to_dict()})
    if annotations:
        dest = annotations.path(path, root)
        ok, data = cv2.imencode(dest.suffix or ".png", draw_faces(image, faces))
        if not ok:  # a format OpenCV reads but cannot write (e.g. GIF)
            dest = annotations.path(path, root, ".png")
            ok, data = cv2.imencode(".png", draw_faces(image, faces))
        with atomic_path(dest) as tmp:
            tmp.write_bytes(data.tobytes())


def do_video(path: Path, recognizer: Any, args: argparse.Namespace, annotations: Annotations | None,
             root: Path | None) -> None:
    import cv2

    from ferpipe.cli.video import VideoOut, frame_count, video_summary
    from ferpipe.draw import draw_faces
    from ferpipe.imageio import _quiet_opencv
    from ferpipe.timeline import Timeline

    _quiet_opencv()  # before FFmpeg opens the file: its warnings would be lines on stderr
    every = args.every
    timeline = Timeline(recognizer.classes) if args.timeline else None
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    fps, total = capture.get(cv2.CAP_PROP_FPS) or 0.0, frame_count(capture)
    capture.release()
    with contextlib.ExitStack() as stack:
        out = None
        if annotations:
            out = stack.enter_context(VideoOut(annotations.path(path, root, ".mp4"), (fps or 10.0) / every))
        from tqdm import tqdm

        bar = stack.enter_context(tqdm(total=total // every or None, desc=path.name, unit=" frames",
                                       file=sys.stderr, disable=None, leave=False))

        def on_frame(frame: Any) -> None:
            bar.update(1)
            if timeline is not None:
                for face in frame.faces:
                    timeline.add(frame.time_s or 0.0, frame.index, face.person, face.emotion,
                                 face.probabilities)
            if out is not None:
                out.write(draw_faces(frame.image, frame.faces))

        for item in video_summary(recognizer.analyze_video(path, every, args.smooth), recognizer.classes,
                                  every, fps, on_frame, total):
            emit({"file": str(path), **item})
    if timeline is not None:
        timeline.write(Path(args.timeline), path.stem)


def run(args: argparse.Namespace) -> int:
    from ferpipe.imageio import image_format, is_video

    if args.every < 1:
        raise FerpipeError(f"--every must be 1 or more, got {args.every}")
    if args.smooth < 0:
        raise FerpipeError(f"--smooth must be 0 or more, got {args.smooth}")
    annotations = Annotations(args.annotate, args.paths) if args.annotate else None
    recognizer = recognizer_from(args)
    failed = 0
    for path, root in expand(args.paths):
        try:
            if path.is_dir():
                raise FerpipeError(f"{path}: no image or video files in this folder")
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file or folder")
            with path.open("rb") as handle:
                head = handle.read(16)
            if image_format(head):  # an image, even a damaged one, is never tried as a video
                do_image(path, recognizer, annotations, root)
            elif path.suffix.lower() in VIDEO_SUFFIXES or is_video(path):
                do_video(path, recognizer, args, annotations, root)
            elif len(head) == 0:
                raise FerpipeError(f"{path}: empty file (0 bytes)")
            else:
                raise FerpipeError(f"{path}: not an image or a video OpenCV can read")
        except BrokenPipeError:  # `| head`: the reader is gone; stop, as main() says, quietly
            raise
        except (OSError, FerpipeError) as err:  # a bug elsewhere keeps its traceback
            report(err)
            failed += 1
    return 1 if failed else 0
