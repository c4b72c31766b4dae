"""Stage `prepare`: read an image archive or folder, clean it, split it, save arrays."""
from __future__ import annotations

import hashlib
import math
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ferpipe.files import atomic_path, write_json, write_npz

# Re-exported: the readers moved to ferpipe.pipeline.images, and callers still import them from here.
from ferpipe.pipeline.images import (  # noqa: F401
    ENTRY_REASONS,
    IMAGE_SUFFIXES,
    LAYOUTS,
    MB,
    MP,
    SPLIT_ALIASES,
    DataError,
    EntryError,
    ReadLimits,
    Skipped,
    content_hash,
    decode,
    iter_images,
    one_line,
)

SPLITS = ("train", "val", "test")
DROP_REASONS = (*ENTRY_REASONS, "near_blank", "conflicting_label_duplicates", "duplicate_copies")
SKIPPED_LISTED = 100  # names listed in the report; the count covers all


@dataclass
class PrepareConfig:
    """Params of `prepare`.

    Images are converted to 8-bit grayscale. One that is not image_px x image_px is cut to
    its centred square (face crops are centred, so this keeps the face and its aspect ratio
    instead of squashing it), then resized: area-averaged when shrinking, bicubic when
    enlarging. image_px x image_px images pass unchanged; 16-bit grayscale is scaled to 8 bits.
    The max_* limits are checked before an entry is read (its size in the archive) and
    before an image is decoded (the size in its header)."""

    source: str
    classes: list[str] = field(default_factory=lambda: ["happy", "neutral", "sad", "surprise"])
    image_px: int = 48
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    blank_std_threshold: float = 2.0
    skip_corrupt: bool = False
    seed: int = 42
    max_entry_megabytes: float = 50.0
    max_total_megabytes: float = 4096.0
    max_image_megapixels: float = 25.0
    # A regular expression over each file's stem whose first group names its group (a person):
    # then val and test are drawn by group, stratified by class, so no group is in two splits.
    group_pattern: str = ""
    # "center": the centred square of each image (face crops); "detect": the face found by the
    # core's detector and cut by its crop function, as at use (faces with context around them).
    framing: str = "center"

    def validate(self) -> None:
        if self.framing not in ("center", "detect"):
            raise ValueError(f"framing must be 'center' or 'detect', got {self.framing!r}")
        if not self.source.strip():
            raise ValueError("source must name a zip archive or a folder, got ''")
        if self.group_pattern:
            try:
                groups = re.compile(self.group_pattern).groups
            except re.error as err:
                raise ValueError(f"group_pattern {self.group_pattern!r} is not a regular "
                                 f"expression ({err})") from None
            if groups < 1:
                raise ValueError(f"group_pattern {self.group_pattern!r} needs a (group) naming "
                                 "the person, e.g. '(.+)_\\d+'")
        if len(self.classes) < 2 or len({c.lower() for c in self.classes}) != len(self.classes):
            raise ValueError(f"classes must be 2 or more distinct names (case-insensitive, as "
                             f"folder names are), got {self.classes}")
        if not 8 <= self.image_px <= 512:
            raise ValueError(f"image_px must be in 8..512, got {self.image_px}")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")
        for name in ("max_entry_megabytes", "max_total_megabytes", "max_image_megapixels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def limits(self) -> ReadLimits:
        return ReadLimits(int(self.max_entry_megabytes * MB), int(self.max_total_megabytes * MB),
                          int(self.max_image_megapixels * MP))


@dataclass
class SourceSpec:
    """One source of faces under params `prepare.sources.<name>`: where it is and how it is split."""

    source: str
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    group_pattern: str = ""
    framing: str = "center"


@dataclass
class PrepareParams:
    """Params section `prepare`: the sources, and the settings they share (PrepareConfig's)."""

    sources: dict[str, SourceSpec]
    classes: list[str] = field(default_factory=lambda: ["happy", "neutral", "sad", "surprise"])
    image_px: int = 48
    blank_std_threshold: float = 2.0
    skip_corrupt: bool = False
    seed: int = 42
    max_entry_megabytes: float = 50.0
    max_total_megabytes: float = 4096.0
    max_image_megapixels: float = 25.0

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("sources must name at least one source")
        for name in self.sources:
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise ValueError(f"source name {name!r}: use lower-case letters, digits and _ "
                                 "(it is a folder name and a metrics key)")
            self.for_source(name).validate()

    def for_source(self, name: str) -> PrepareConfig:
        shared = {k: v for k, v in vars(self).items() if k != "sources"}
        return PrepareConfig(**vars(self.sources[name]), **shared)


def prepare_all(params: PrepareParams, out_dir: Path, report_path: Path) -> dict:
    """Every source into out_dir/<name>/ (train, val, test npz and a manifest); one report
    with a section per source. Every source is checked before any is read."""
    for name, spec in params.sources.items():
        if not Path(spec.source).exists():
            raise FileNotFoundError(f"{spec.source}: source '{name}' not found (run `dvc pull`?)")
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in params.sources:
            reports[name] = prepare(params.for_source(name), out_dir / name, Path(tmp) / f"{name}.json")
    report = {"classes": params.classes, "sources": reports,
              "kept": sum(r["kept"] for r in reports.values()),
              "counts": {name: r["counts"] for name, r in reports.items()}}
    write_json(report_path, report)
    return report


@dataclass
class Sample:
    source: str
    label: str  # lower-case class folder name
    split: str  # as given by the input; assign_splits moves some train samples to val/test
    pixels: np.ndarray
    pixel_hash: str


def load_samples(cfg: PrepareConfig, report: dict) -> list[Sample]:
    """Decode every image, all classes (duplicates are judged across all); count drops."""
    samples, seen_classes, skipped = [], Counter(), []
    limits = cfg.limits()
    kind = "file" if Path(cfg.source).is_dir() else "entry"
    images = iter_images(Path(cfg.source), limits=limits, skip_corrupt=cfg.skip_corrupt, skipped=skipped)
    # Reading FER2013 takes ~25 s: a bar in a terminal; none in logs or pipes (disable=None).
    from tqdm import tqdm

    for name, split, cls, raw in tqdm(images, desc=f"prepare: reading {cfg.source}", unit=" images",
                                      disable=None, mininterval=0.5):
        seen_classes[cls] += 1
        try:
            if cfg.framing == "detect":
                from ferpipe.pipeline.framing import detect_and_crop

                pixels, detected = detect_and_crop(raw, cfg.image_px, limits.image_pixels)
                report["framing"]["detected" if detected else "centre_half"] += 1
            else:
                pixels = decode(raw, cfg.image_px, max_pixels=limits.image_pixels)
        except EntryError as err:
            if not cfg.skip_corrupt:
                raise err.at(f"{cfg.source}: {kind} {name!r}") from None
            skipped.append(Skipped(name, err.reason, err.detail))
            continue
        if pixels.std() < cfg.blank_std_threshold:
            report["dropped"]["near_blank"] += 1
            continue
        samples.append(Sample(name, cls, split, pixels, hashlib.sha1(pixels.tobytes()).hexdigest()))
    missing = [c for c in cfg.classes if seen_classes[c.lower()] == 0]
    if missing:
        raise DataError(f"{cfg.source}: no images for class(es) {missing}; found "
                        f"{sorted(seen_classes)}; expected {LAYOUTS}")
    for item in skipped:
        if item.reason in ENTRY_REASONS:
            report["dropped"][item.reason] += 1
    report["input_files"] = sum(seen_classes.values())
    report["input_files_by_class"] = dict(sorted(seen_classes.items()))
    report["skipped_count"] = len(skipped)
    report["skipped_by_reason"] = dict(sorted(Counter(s.reason for s in skipped).items()))
    report["skipped"] = [s._asdict() for s in skipped[:SKIPPED_LISTED]]
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


def group_of(name: str, pattern: str, source: str) -> str:
    """The group (person) of a file: group 1 of `pattern` matched against its stem."""
    match = re.fullmatch(pattern, PurePosixPath(name).stem)
    if match is None:
        raise DataError(f"{source}: file {name!r} does not match prepare group_pattern "
                        f"'{pattern}'; rename it or fix the pattern")
    return match.group(1)


def _draw(pool: list[int], labels: list[str], share: float, cfg: PrepareConfig,
          samples: list[Sample]) -> list[int]:
    """Indices of `pool` for a split of about `share`: stratified by class, seeded; by group
    (StratifiedGroupKFold, one fold) when the source has a group pattern."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split  # slow import

    if not cfg.group_pattern:
        return train_test_split(pool, test_size=share, random_state=cfg.seed, stratify=labels)[1]
    groups = [group_of(samples[i].source, cfg.group_pattern, cfg.source) for i in pool]
    folds = StratifiedGroupKFold(n_splits=max(2, round(1.0 / share)), shuffle=True,
                                 random_state=cfg.seed)
    _, picked = next(folds.split(pool, labels, groups))
    return [pool[i] for i in picked]


def assign_splits(samples: list[Sample], cfg: PrepareConfig) -> None:
    """Fill in missing val/test splits with stratified, seeded draws from train (by group
    where the source has a group pattern)."""
    given = {s.split for s in samples}
    if "train" not in given:
        raise DataError(f"{cfg.source}: no training images after cleaning; expected {LAYOUTS}")
    for split, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if split in given:
            continue
        pool = [i for i, s in enumerate(samples) if s.split == "train"]
        share = fraction if split == "test" else fraction / (1.0 - (0.0 if "test" in given else cfg.test_fraction))
        labels = [samples[i].label for i in pool]
        # Each class must give the split at least one image and keep one: say which falls short
        # (scikit-learn would only name the total).
        need = max(2, math.ceil(1.0 / share - 1e-9))
        count, cls = min((n, c) for c, n in Counter(labels).items())
        if count < need:
            raise DataError(f"{cfg.source}: class '{cls}' has {count} training images after "
                            f"cleaning; drawing the {split} split with prepare.{split}_fraction="
                            f"{fraction:g} needs at least {need} per class; add images or raise "
                            f"prepare.{split}_fraction")
        for i in _draw(pool, labels, share, cfg, samples):
            samples[i].split = split


def prepare(cfg: PrepareConfig, out_dir: Path, report_path: Path) -> dict:
    """Run the whole stage; returns the data report also written to `report_path`."""
    report = {"source": cfg.source, "classes": cfg.classes,
              "note": "input, duplicate and dropped counts cover all classes of the input; "
                      "kept and counts cover the chosen classes",
              "duplicate_groups": 0,
              "conflicting_label_groups": 0,
              "framing": {"mode": cfg.framing, "detected": 0, "centre_half": 0},
              "dropped": Counter(dict.fromkeys(DROP_REASONS, 0))}
    wanted = [c.lower() for c in cfg.classes]
    samples = [s for s in deduplicate(load_samples(cfg, report), report) if s.label in wanted]
    assign_splits(samples, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        part = [s for s in samples if s.split == split]
        if not part:
            raise DataError(f"{cfg.source}: split '{split}' is empty after cleaning")
        write_npz(out_dir / f"{split}.npz", x=np.stack([s.pixels for s in part]),
                  y=np.array([wanted.index(s.label) for s in part], dtype=np.int64),
                  classes=np.array(cfg.classes))
        per_class = Counter(s.label for s in part)
        counts[split] = {"total": len(part), **{c: per_class[c.lower()] for c in cfg.classes}}
    import pandas as pd  # slow import: not before params are checked

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
