"""The light core's footprint and speed on this CPU (issue targets in brackets).

    uv run python bench/core_speed.py [--venvs DIR] [--skip-install]

- install size of the core wheel and of each extra, each in a fresh virtualenv (< 400 MB core);
- cold start, a new process each time: `ferpipe predict photo.jpg` (< 1.5 s) and
  `EmotionRecognizer()` (< 1 s), median of 5, with the core venv's own Python;
- warm: one face (< 1 ms), a 640x480 photo with detection (< 15 ms), video with one face and
  detection every frame (>= 60 frames/s); peak memory of the cold predict.
Run it with nothing else on the machine: beside other jobs timings come out about 2x slower.
Prints one JSON object; the README's footprint table is copied from it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data as sd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
UV = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")


def photo_640x480() -> np.ndarray:
    """scikit-image's astronaut (one face) at 480x480, padded to 640x480."""
    face = cv2.resize(cv2.cvtColor(sd.astronaut(), cv2.COLOR_RGB2BGR), (480, 480), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(face, 0, 0, 80, 80, cv2.BORDER_REPLICATE)


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def install(wheel: Path, venvs: Path, extra: str) -> tuple[Path, float]:
    venv = venvs / (extra or "core")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    target = f"{wheel}[{extra}]" if extra else str(wheel)
    subprocess.run([UV, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), target], check=True)
    return venv, du_mb(venv)


def median_wall(argv: list[str], cwd: Path, runs: int = 5) -> tuple[float, float]:
    """(median wall s, largest peak RSS MB) of `runs` fresh processes."""
    walls, peaks = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        walls.append(time.perf_counter() - start)
        assert proc.returncode == 0, proc.stderr[-1000:]
        peaks.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return statistics.median(walls), max(peaks)


def warm(calls: int) -> dict:
    from ferpipe import EmotionRecognizer

    recognizer = EmotionRecognizer()
    face = np.asarray(cv2.resize(cv2.cvtColor(sd.astronaut(), cv2.COLOR_RGB2GRAY)[40:220, 140:320], (48, 48)))
    photo = photo_640x480()

    def median_ms(fn, n):
        fn(), fn()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    one_face = median_ms(lambda: recognizer.classifier.predict_proba(face[None]), calls * 10)
    photo_ms = median_ms(lambda: recognizer.analyze(photo), calls)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
        for i in range(150):
            writer.write(np.roll(photo, i, axis=1))
        writer.release()
        start = time.perf_counter()
        frames = sum(1 for _ in recognizer.analyze_video(path))
        fps = frames / (time.perf_counter() - start)
    return {"one_face_ms": round(one_face, 3), "photo_640x480_ms": round(photo_ms, 2),
            "video_one_face_fps": round(fps, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venvs", default="/tmp/ferpipe-bench-venvs")
    parser.add_argument("--skip-install", action="store_true", help="reuse the venvs made before")
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    venvs = Path(args.venvs)
    result: dict = {}
    if not args.skip_install:
        dist = venvs / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        subprocess.run([UV, "build", "-q", "--wheel", "--out-dir", str(dist)], cwd=ROOT, check=True)
        (wheel,) = dist.glob("ferpipe-*.whl")
        for extra in ("", "tf", "serve", "demo"):
            result[f"install_mb_{extra or 'core'}"] = round(install(wheel, venvs, extra)[1], 1)
    core = venvs / "core" / "bin"
    work = Path(tempfile.mkdtemp())
    cv2.imwrite(str(work / "photo.jpg"), photo_640x480())
    result["cold_predict_s"], result["cold_predict_peak_mb"] = (
        round(v, 3) for v in median_wall([str(core / "ferpipe"), "predict", "photo.jpg"], work))
    result["cold_recognizer_s"], _ = (round(v, 3) for v in median_wall(
        [str(core / "python"), "-c", "from ferpipe import EmotionRecognizer; EmotionRecognizer()"], work))
    result.update(warm(args.calls))
    result["cpu"] = os.cpu_count()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
