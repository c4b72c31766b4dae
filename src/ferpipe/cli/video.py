"""Annotated video out: VP9 in MP4 ('vp09'), which browsers play and the OpenCV wheel can write
(its FFmpeg has no H.264 encoder: 'avc1' and 'H264' fail to open; 'mp4v' MPEG-4 Part 2 opens but
browsers do not play it). VP9 in WebM works too, but WebM has no codec tags, and OpenCV prints
"tag ... is not supported" on stderr for every WebM file it writes."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ferpipe.recognizer import Frame

SUFFIX, FOURCC = ".mp4", "vp09"


def frame_count(capture: Any) -> int:
    import cv2

    return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0))


class VideoOut(contextlib.AbstractContextManager):
    """Frames written to a temporary file beside `dest`, moved into place on success only."""

    def __init__(self, dest: Path, fps: float) -> None:
        from ferpipe.files import atomic_path

        self.dest, self.fps = Path(dest).with_suffix(SUFFIX), fps
        self._atomic = atomic_path(self.dest)
        self._tmp = self._atomic.__enter__()
        self._writer: Any = None

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            height, width = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*FOURCC),
                                           self.fps, (width, height))
            if not self._writer.isOpened():
                raise OSError(f"{self.dest}: OpenCV cannot write {FOURCC} video here")
        self._writer.write(frame)

    def __exit__(self, *exc: Any) -> None:
        if self._writer is not None:
            self._writer.release()
        self._atomic.__exit__(*exc)


def video_summary(frames: Iterator[Frame], classes: list[str], every: int, fps: float,
                  on_frame: Callable[[Frame], None] | None = None, total: int = 0) -> Iterator[dict]:
    """The JSON lines of `ferpipe predict` for a video: one per face (or {"faces": 0} for a
    frame without one), then {"summary": ...}. `total`: the container's frame count, if known."""
    counts = dict.fromkeys(classes, 0)
    people: dict[int, dict] = {}
    analysed = faces = empty = 0
    start = time.perf_counter()
    last = -1
    for frame in frames:
        analysed += 1
        last = frame.index
        stamp = {"frame": frame.index, "time_s": frame.time_s}
        if not frame.faces:
            empty += 1
            yield {**stamp, "faces": 0}
        for face in frame.faces:
            counts[face.emotion] += 1
            faces += 1
            if face.person is not None:
                seen = people.setdefault(face.person, {"first_s": frame.time_s, "frames": 0,
                                                       "emotions": dict.fromkeys(classes, 0)})
                seen["frames"] += 1
                seen["last_s"] = frame.time_s
                seen["emotions"][face.emotion] += 1
            yield {**stamp, **face.to_dict()}
        if on_frame is not None:
            on_frame(frame)
    elapsed = time.perf_counter() - start
    yield {"summary": {"frames": max(total, last + 1), "frames_analyzed": analysed, "every": every,
                       "video_fps": round(fps, 3), "faces": faces, "frames_without_face": empty,
                       "emotions": counts, "people": {str(k): v for k, v in people.items()},
                       "seconds": round(elapsed, 3),
                       "fps": round(analysed / elapsed, 2) if elapsed > 0 else None}}
