"""Stage `prepare`: read an image archive or folder, clean it, split it, save arrays."""
from __future__ import annotations

import hashlib
import io
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from ferpipe.files import atomic_path, load_npz, write_json, write_npz

SPLITS = ("train", "val", "test")
# Folder names accepted for each split: the study's layout says "validation".
SPLIT_ALIASES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
DROP_REASONS = ("undecodable", "near_blank", "conflicting_label_duplicates", "duplicate_copies")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class PrepareConfig:
    source: str
    classes: list[str] = field(default_factory=lambda: ["happy", "neutral", "sad", "surprise"])
    image_px: int = 48
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    blank_std_threshold: float = 2.0
    skip_corrupt: bool = False
    seed: int = 42

    def validate(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be 2 or more distinct names, got {self.classes}")
        if not 8 <= self.image_px <= 512:
            raise ValueError(f"image_px must be in 8..512, got {self.image_px}")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")


@dataclass
class Sample:
    source: str
    label: str  # lower-case class folder name
    split: str  # as given by the input; assign_splits moves some train samples to val/test
    pixels: np.ndarray
    pixel_hash: str


def _entry_split_class(name: str) -> tuple[str, str] | None:
    """Map 'root/.../<split>/<class>/<file>' to (split, class); None for other entries."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    split = SPLIT_ALIASES.get(parts[-3].lower())
    return (split, parts[-2].lower()) if split else None


def _check_entry_safe(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"{archive}: refusing archive entry '{name}' that escapes the target folder")


def iter_images(source: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """Yield (source name, split, class, raw bytes) from a zip archive or a folder."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            key = _entry_split_class(rel) if path.is_file() else None
            if key:
                yield rel, key[0], key[1], path.read_bytes()
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            names = sorted(info.filename for info in archive.infolist() if not info.is_dir())
            for name in names:
                _check_entry_safe(source, name)
            for name in names:
                key = _entry_split_class(name)
                if key:
                    yield name, key[0], key[1], archive.read(name)
    elif source.exists():
        raise ValueError(f"{source}: not a zip archive or a folder")
    else:
        raise FileNotFoundError(f"{source}: input data not found (run `dvc pull`?)")


def decode(raw: bytes, image_px: int) -> np.ndarray:
    """Any image -> 8-bit grayscale image_px x image_px array."""
    with Image.open(io.BytesIO(raw)) as image:
        image = image.convert("L")
        if image.size != (image_px, image_px):
            image = image.resize((image_px, image_px), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)


def load_samples(cfg: PrepareConfig, report: dict) -> list[Sample]:
    """Decode every image, all classes (duplicates are judged across all); count drops."""
    samples, seen_classes = [], Counter()
    dropped = report["dropped"]
    for name, split, cls, raw in iter_images(Path(cfg.source)):
        seen_classes[cls] += 1
        try:
            pixels = decode(raw, cfg.image_px)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            if not cfg.skip_corrupt:
                raise ValueError(f"{cfg.source}: cannot decode image '{name}' ({err}); "
                                 "set prepare.skip_corrupt: true to skip such files") from None
            dropped["undecodable"] += 1
            continue
        if pixels.std() < cfg.blank_std_threshold:
            dropped["near_blank"] += 1
            continue
        samples.append(Sample(name, cls, split, pixels, hashlib.sha1(pixels.tobytes()).hexdigest()))
    missing = [c for c in cfg.classes if seen_classes[c.lower()] == 0]
    if missing:
        raise ValueError(f"{cfg.source}: no images for class(es) {missing}; found {sorted(seen_classes)}")
    report["input_files"] = sum(seen_classes.values())
    report["input_files_by_class"] = dict(sorted(seen_classes.items()))
    return samples


def deduplicate(samples: list[Sample], report: dict) -> list[Sample]:
    """Keep one copy of each exact pixel duplicate; drop groups whose labels conflict.

    Counts cover every class in the input, before the class filter."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.pixel_hash].append(sample)
    kept = []
    order = {s: i for i, s in enumerate(SPLITS)}
    for group in groups.values():
        if len(group) > 1:
            report["duplicate_groups"] += 1
            if len({s.label for s in group}) > 1:
                report["conflicting_label_groups"] += 1
                report["dropped"]["conflicting_label_duplicates"] += len(group)
                continue
            report["dropped"]["duplicate_copies"] += len(group) - 1
        # One copy survives, in the earliest given split, so no duplicate straddles splits.
        kept.append(min(group, key=lambda s: (order[s.split], s.source)))
    return sorted(kept, key=lambda s: s.source)


def assign_splits(samples: list[Sample], cfg: PrepareConfig) -> None:
    """Fill in missing val/test splits with stratified, seeded draws from train."""
    given = {s.split for s in samples}
    for split, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if split in given:
            continue
        pool = [i for i, s in enumerate(samples) if s.split == "train"]
        share = fraction if split == "test" else fraction / (1.0 - (0.0 if "test" in given else cfg.test_fraction))
        _, picked = train_test_split(pool, test_size=share, random_state=cfg.seed,
                                     stratify=[samples[i].label for i in pool])
        for i in picked:
            samples[i].split = split


def prepare(cfg: PrepareConfig, out_dir: Path, report_path: Path) -> dict:
    """Run the whole stage; returns the data report also written to `report_path`."""
    report = {"source": cfg.source, "classes": cfg.classes,
              "note": "input, duplicate and dropped counts cover all classes of the input; "
                      "kept and counts cover the chosen classes",
              "duplicate_groups": 0,
              "conflicting_label_groups": 0,
              "dropped": Counter(dict.fromkeys(DROP_REASONS, 0))}
    wanted = [c.lower() for c in cfg.classes]
    samples = [s for s in deduplicate(load_samples(cfg, report), report) if s.label in wanted]
    assign_splits(samples, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        part = [s for s in samples if s.split == split]
        if not part:
            raise ValueError(f"{cfg.source}: split '{split}' is empty after cleaning")
        write_npz(out_dir / f"{split}.npz", x=np.stack([s.pixels for s in part]),
                  y=np.array([wanted.index(s.label) for s in part], dtype=np.int64),
                  classes=np.array(cfg.classes))
        per_class = Counter(s.label for s in part)
        counts[split] = {"total": len(part), **{c: per_class[c.lower()] for c in cfg.classes}}
    manifest = pd.DataFrame({"source": [s.source for s in samples],
                             "label": [cfg.classes[wanted.index(s.label)] for s in samples],
                             "split": [s.split for s in samples],
                             "pixel_hash": [s.pixel_hash for s in samples]})
    with atomic_path(out_dir / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    report["dropped"] = dict(report["dropped"])
    report["kept"] = len(samples)
    report["counts"] = counts
    write_json(report_path, report)
    return report


def load_split(data_dir: Path | str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(x uint8 [N, H, W], y int64 [N], class names) of a prepared or augmented split."""
    arrays = load_npz(Path(data_dir) / f"{split}.npz")
    return arrays["x"], arrays["y"], [str(c) for c in arrays["classes"]]
