"""Stage `prepare`: read an image archive or folder, clean it, split it, save arrays."""
from __future__ import annotations

import hashlib
import math
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
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
from ferpipe.pipeline.params import PrepareConfig, PrepareParams, SourceSpec  # noqa: F401  (re-exported)

SPLITS = ("train", "val", "test")
DROP_REASONS = (*ENTRY_REASONS, "near_blank", "conflicting_label_duplicates", "duplicate_copies")
SKIPPED_LISTED = 100  # names listed in the report; the count covers all


def read_limits(cfg: PrepareConfig) -> ReadLimits:
    """The prepare.max_* params as the reader's limits (bytes and pixels)."""
    return ReadLimits(int(cfg.max_entry_megabytes * MB), int(cfg.max_total_megabytes * MB),
                      int(cfg.max_image_megapixels * MP))


def check_sources(params: PrepareParams) -> None:
    """Every source is there, before any is read (and before a stage starts MLflow)."""
    for name, spec in params.sources.items():
        if not Path(spec.source).exists():
            raise FileNotFoundError(f"{spec.source}: source '{name}' not found (run `dvc pull`?)")


def prepare_all(params: PrepareParams, out_dir: Path, report_path: Path) -> dict:
    """Every source into out_dir/<name>/ (train, val, test npz and a manifest); one report
    with a section per source."""
    check_sources(params)
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
    limits = read_limits(cfg)
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
