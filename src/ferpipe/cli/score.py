"""`ferpipe score DIR [DIR ...]`: how well the model does on labelled folders of one's own.

Each folder is one source of pictures, scored on its own (the model reads well only pictures like
its training data, so one number over mixed sources hides where it fails); with several, a table
names each source and the mean of their macro-F1 (the pipeline's champion criterion). A folder
(or zip) is `<class>/<image>` or `<split>/<class>/<image>`, read by the reader of
`prepare` (ferpipe.pipeline.images). Images are decoded by the core (OpenCV) and cut by the one
crop function every command uses: the centred square, resized to the model's input with area
averaging, or with `--detect` the largest face found in each photo (with --no-whole-image, a
photo without one is skipped and counted). Faces go to the model in batches: memory stays flat.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ferpipe.cli.common import add_model_args, recognizer_from
from ferpipe.errors import FerpipeError
from ferpipe.metrics import classification_metrics, report_text

EXAMPLE = """example:
  ferpipe score my_faces/              # my_faces/happy/*.jpg, my_faces/sad/*.jpg, ...
  ferpipe score webcam=shots/ stills=movie_stills.zip --detect   # one row per source
  ferpipe score data/ --split test --json > scores.json
  ferpipe score photos/ --detect --model models:/fer-emotion@champion"""


BATCH = 256  # faces a model call: memory stays flat however large the folder


def iter_faces(root: Path, recognizer: Any, split: str | None, detect: bool, skipped: dict,
               unread: list) -> Iterator[tuple[np.ndarray, int]]:
    """(face crop, label) of each labelled image, read by `prepare`'s reader (the same layouts
    and size limits), cropped as every use command crops: the largest face found with
    --detect, else the whole image's centred square, as training crops are made."""
    from ferpipe.imageio import to_gray
    from ferpipe.inference import crop_face
    from ferpipe.pipeline.images import Skipped, iter_images

    wanted = [c.lower() for c in recognizer.classes]
    px = recognizer.classifier.image_px
    for name, part, cls, raw in iter_images(root, skip_corrupt=True, skipped=unread):
        if split and part != split:
            skipped["other_split"] += 1
            continue
        if cls not in wanted:
            skipped["other_class"][cls] = skipped["other_class"].get(cls, 0) + 1
            continue
        try:
            gray = to_gray(recognizer.read(raw))
        except FerpipeError as err:
            unread.append(Skipped(name, "undecodable", str(err).split(": ", 1)[-1]))
            continue
        if detect:
            located = [loc.detection.box for loc in recognizer.locate(gray)]
            if not located:
                skipped["no_face"] += 1
                continue
            box = max(located, key=lambda b: b[2] * b[3])
        else:
            side = min(gray.shape)
            box = ((gray.shape[1] - side) // 2, (gray.shape[0] - side) // 2, side, side)
        yield crop_face(gray, box, image_px=px), wanted.index(cls)


def text_report(result: dict) -> str:
    lines = [f"{result['images']} images from {result['folder']} (model: {result['model']})",
             report_text(result)]
    skipped = result["skipped"]
    notes = [f"{n} in other class folders {skipped['other_class']}" for n in
             [sum(skipped["other_class"].values())] if n]
    notes += [f"{skipped['no_face']} without a detected face"] if skipped["no_face"] else []
    notes += [f"{len(skipped['unreadable'])} unreadable"] if skipped["unreadable"] else []
    return "\n".join(lines + ([f"\nskipped: {'; '.join(notes)}"] if notes else []))


def score_folder(root: str | Path, recognizer: Any, split: str | None = None,
                 detect: bool = False) -> dict:
    """Metrics of the recognizer's model on a labelled folder, in batches of BATCH faces."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    skipped = {"other_class": {}, "unreadable": [], "no_face": 0, "other_split": 0}
    unread: list = []
    labels, preds, batch = [], [], []
    for face, label in iter_faces(root, recognizer, split, detect, skipped, unread):
        batch.append(face)
        labels.append(label)
        if len(batch) == BATCH:
            preds.append(recognizer.classifier.predict_proba(np.stack(batch)).argmax(axis=1))
            batch = []
    if batch:
        preds.append(recognizer.classifier.predict_proba(np.stack(batch)).argmax(axis=1))
    skipped["unreadable"] = [{"file": s.name, "error": s.detail} for s in unread
                             if s.reason not in ("hidden", "not_image")]
    if not labels:
        found = sorted(skipped["other_class"])
        raise FerpipeError(f"{root}: no labelled images of the model's classes {recognizer.classes}"
                         f"{f' in split {split!r}' if split else ''} (expected <class>/<image> or "
                         f"<split>/<class>/<image>; other class folders found: {found})")
    y, pred = np.array(labels, dtype=np.int64), np.concatenate(preds)
    return {"folder": str(root), "model": recognizer.classifier.source, "split": split or "all",
            **classification_metrics(y, pred, recognizer.classes, macro_over_present=True),
            "skipped": skipped}


def parse_sources(specs: list[str]) -> dict[str, Path]:
    """{source name: folder} from DIR or NAME=DIR arguments; a DIR's name is its folder's name
    (a zip's without the suffix)."""
    sources: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or "/" in name or Path(spec).exists():  # a path, "=" and all
            name, folder = "", spec
        path = Path(folder)
        name = name or (path.stem if path.suffix == ".zip" else path.resolve().name)
        if name in sources:
            raise FerpipeError(f"{spec}: a second source named {name!r} (name them: NAME=DIR)")
        sources[name] = path
    return sources


def sources_table(results: dict[str, dict], mean: float) -> str:
    """One row per source (images, accuracy, macro-F1), then their mean macro-F1."""
    width = max(len("source"), *map(len, results))
    rows = [f"{'source':<{width}}  {'images':>7}  {'accuracy':>8}  {'macro-F1':>8}"]
    rows += [f"{name:<{width}}  {r['images']:>7}  {r['accuracy']:>8.4f}  {r['macro_f1']:>8.4f}"
             for name, r in results.items()]
    return "\n".join(rows + [f"mean macro-F1 over {len(results)} sources: {mean:.4f}"])


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score", help="accuracy, macro-F1, per-class P/R/F1 and confusion matrix on a labelled folder",
        description="Score the model on labelled folders, each one source scored on its own: "
                    "DIR/<class>/<image> or DIR/<split>/<class>/<image> (class folder names as the model's classes; others "
                    "are counted and skipped). Images are taken as face crops, decoded as training "
                    "data was, unless --detect.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", metavar="DIR", nargs="+",
                        help="labelled folder (or a zip in the split layout); several are scored "
                             "as separate sources, named by their folders or NAME=DIR")
    add_model_args(parser, detect_flag="--detect")
    parser.add_argument("--split", choices=("train", "val", "test"), default=None,
                        help="only this split of a <split>/<class>/ folder (default: all images)")
    parser.add_argument("--detect", action="store_true",
                        help="photos: classify the largest detected face instead of the whole image")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    sources = parse_sources(args.folders)
    recognizer = recognizer_from(args)
    results = {}
    for name, folder in sources.items():
        results[name] = score_folder(folder, recognizer, args.split, args.detect)
        for bad in results[name]["skipped"]["unreadable"]:
            print(f"error: {folder / bad['file']}: {bad['error']}", file=sys.stderr)
    mean = float(np.mean([r["macro_f1"] for r in results.values()]))
    if len(results) == 1:
        (result,) = results.values()
        print(json.dumps(result) if args.json else text_report(result))
    elif args.json:
        print(json.dumps({"sources": results, "mean_macro_f1": mean}))
    else:
        print("\n\n".join([f"== {name}\n{text_report(r)}" for name, r in results.items()]
                          + [sources_table(results, mean)]))
    return 1 if any(r["skipped"]["unreadable"] for r in results.values()) else 0
