"""Versions and lineage: the git commit a run comes from, the DVC md5 of its data, and what
dvc.yaml says the pipeline (and each stage) writes."""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import yaml


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def pipeline_outputs(dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """What the pipeline itself writes: dvc.lock and every out, metric and plot in dvc.yaml,
    as git globs (`${key}` and other interpolations become `*`)."""
    try:
        spec = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    except (OSError, yaml.YAMLError):
        spec = {}
    stages = [s.get("do", s) for s in (spec.get("stages") or {}).values() if isinstance(s, dict)]
    entries = [e for part in (*stages, spec) for key in ("outs", "metrics", "plots")
               for e in (part.get(key) or [])]
    paths = ["dvc.lock", *(e if isinstance(e, str) else next(iter(e)) for e in entries)]
    return list(dict.fromkeys(re.sub(r"\$\{[^}]*\}", "*", p.rstrip("/")) for p in paths))


def stage_outputs(stage: str, key: str | None = None, dvc_yaml: str | Path = "dvc.yaml") -> list[Path]:
    """The outs, metrics and plots dvc.yaml declares for `stage` (`${key}` of a foreach stage
    filled with `key`; other interpolations, or no key, match by glob), bar `persist: true` ones:
    those outlive a run and may be in use by another process (tune's workers)."""
    try:
        part = (yaml.safe_load(Path(dvc_yaml).read_text()) or {})["stages"][stage]
        part = part.get("do", part)
    except (OSError, yaml.YAMLError, LookupError, TypeError, AttributeError):
        return []  # no dvc.yaml here (a test, a copy of one stage), or no such stage
    found: list[Path] = []
    for entry in (e for k in ("outs", "metrics", "plots") for e in (part.get(k) or [])):
        path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        if isinstance(opts, dict) and opts.get("persist"):
            continue
        path = path.rstrip("/").replace("${key}", key) if key else path.rstrip("/")
        pattern = re.sub(r"\$\{[^}]*\}", "*", path)
        found += sorted(Path().glob(pattern)) if "*" in pattern else [Path(pattern)]
    return found


def git_state() -> tuple[str, bool]:
    """(commit, dirty); dirty means tracked files differ from the commit, apart from the
    pipeline's own outputs (they change while it runs, so would make every run dirty)."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    excludes = [f":(exclude,glob){p}{tail}" for p in pipeline_outputs() for tail in ("", "/**")]
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", *excludes))
    return commit, dirty


def data_version(path: str | Path) -> str:
    """DVC md5 of a data input: from its .dvc file, from dvc.lock, else hashed here."""
    path = Path(path)
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.exists():
        return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    lock = Path("dvc.lock")
    if lock.exists():
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            for out in stage.get("outs", []):
                if Path(out["path"]) == path:
                    return out["md5"]
    if path.is_file():
        digest = hashlib.md5()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    return "untracked"
