"""Annotated video out: VP9 in WebM, which browsers play and the OpenCV wheel can write (its
FFmpeg has no H.264 encoder: 'avc1' and 'H264' fail to open; 'mp4v' MPEG-4 Part 2 opens but
browsers do not play it)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

SUFFIX, FOURCC = ".webm", "VP90"


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
            from ferpipe.imageio import _quiet_opencv

            _quiet_opencv()  # FFmpeg's "tag 0x30395056/'VP90' is not supported" line on every video
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
