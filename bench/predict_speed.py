"""How fast `ferpipe predict` is on this CPU: one face, one photo, a video.

    nice -n 19 uv run python bench/predict_speed.py [--model PATH]

Targets: one 48x48 face classified < 5 ms; a 640x480 photo with one face, detection included,
< 40 ms; and the library call's overhead against the bare compiled model. Wall time is the median of repeated calls; CPU time (process
time, all threads) is shown too because wall time is inflated when other jobs share the CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data as sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ferpipe.cli import use_one_interop_thread

use_one_interop_thread()  # as `ferpipe predict` runs; before TensorFlow starts
from ferpipe.detect import detect_faces, has_mtcnn, has_yunet  # noqa: E402
from ferpipe.recognizer import EmotionRecognizer  # noqa: E402


def timed(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) over `calls` calls after two warm-up calls."""
    fn(), fn()
    wall, cpu_start = [], time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
    return statistics.median(wall), (time.process_time() - cpu_start) * 1000 / calls


def photo_640x480() -> np.ndarray:
    """scikit-image's astronaut (one face, ~80 px) at 480x480, padded to 640x480."""
    face = cv2.resize(cv2.cvtColor(sd.astronaut(), cv2.COLOR_RGB2BGR), (480, 480), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(face, 0, 0, 80, 80, cv2.BORDER_REPLICATE)


def write_video(path: Path, frames: int = 60) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    base = photo_640x480()
    for i in range(frames):
        writer.write(np.roll(base, i * 2, axis=1))  # the face moves a little each frame
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model to time (default: the release)")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    crops = EmotionRecognizer(args.model, detect=False)
    clf = crops.classifier
    face = np.load(Path(__file__).resolve().parents[1] / "models/release/samples.npz")["x"][:1]
    photo = photo_640x480()
    detectors = ["haar"] + ["yunet"] * has_yunet() + ["mtcnn"] * has_mtcnn()
    rows = []
    bare = clf._infer  # the compiled function alone: no checks, no conversion
    tensor = face[..., None].astype("float32")
    wall, cpu = timed(lambda: bare(tensor).numpy(), args.calls)
    rows.append(("one 48x48 face, bare compiled tf.function", "-", wall, cpu, ""))
    wall, cpu = timed(lambda: clf.predict_proba(face), args.calls)
    rows.append(("one 48x48 face, Classifier.predict_proba", "-", wall, cpu, "< 5 ms"))
    wall, cpu = timed(lambda: crops.analyze(face[0]), args.calls)
    rows.append(("one 48x48 face, EmotionRecognizer.analyze (no detection)", "-", wall, cpu, "< 5 ms"))
    wall, cpu = timed(lambda: clf.model.predict(face[..., None].astype("float32"), verbose=0), 10)
    rows.append(("one 48x48 face, model.predict (for comparison)", "-", wall, cpu, ""))
    recognizers = {name: EmotionRecognizer(clf, name) for name in detectors}
    for name, rec in recognizers.items():
        n = len(detect_faces(photo, detector=name))
        wall, cpu = timed(lambda name=name: detect_faces(photo, detector=name), max(5, args.calls // 5))
        rows.append((f"640x480 photo, detection only ({n} face)", name, wall, cpu, ""))
        wall, cpu = timed(lambda rec=rec: rec.analyze(photo), max(5, args.calls // 5))
        rows.append(("640x480 photo, EmotionRecognizer.analyze", name, wall, cpu, "< 40 ms"))
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.mp4"
        write_video(video)
        for name, rec in recognizers.items():
            for every in (1, 5):
                start = time.perf_counter()
                analysed = len(list(rec.analyze_video(video, every=every)))
                seconds = time.perf_counter() - start
                rows.append((f"640x480 video, every {every}: {analysed / seconds:.1f} analysed frames/s, "
                             f"{60 / seconds:.1f} video frames/s", name, 1000 * seconds / analysed,
                             float("nan"), ""))
    print(f"{'measurement':70s} {'detector':8s} {'wall ms':>8s} {'cpu ms':>8s}  target")
    for what, det, wall, cpu, target in rows:
        print(f"{what:70s} {det:8s} {wall:8.1f} {cpu:8.1f}  {target}")


if __name__ == "__main__":
    main()
