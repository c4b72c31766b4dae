"""Faces drawn on a picture: one box and label per face, for `ferpipe predict --annotate` and
the demo page alike."""
from __future__ import annotations

from typing import Any

import numpy as np

# One colour per face (or per person in a video), RGB; OpenCV draws BGR.
COLOURS = [(60, 180, 75), (230, 50, 50), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def draw_faces(image: np.ndarray, faces: list[Any], numbered: bool = False) -> np.ndarray:
    """A BGR copy of `image` (BGR or gray) with each face's box and "emotion score" drawn;
    "P<n>" first for a face with a person (video), "<n>" with `numbered` (the demo's list)."""
    import cv2

    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3].copy()
    scale = max(canvas.shape[:2]) / 640
    thickness, font = max(1, round(2 * scale)), 0.6 * max(scale, 0.5)
    for n, face in enumerate(faces, 1):
        x, y, w, h = (int(v) for v in face.box)
        key = face.person if face.person is not None else n
        colour = COLOURS[(key - 1) % len(COLOURS)][::-1]
        tag = f"P{face.person} " if face.person is not None else (f"{n} " if numbered else "")
        text = f"{tag}{face.emotion} {face.score:.2f}"
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thickness)
        top = y - th - base - 4 if y - th - base - 4 >= 0 else y + h
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + base + 4), colour, -1)
        cv2.putText(canvas, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return canvas
