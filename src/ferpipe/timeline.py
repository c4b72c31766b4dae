"""A video as a timeline: one CSV row per person per analysed frame, and a chart of each
person's emotions over the clip (drawn with OpenCV, so the core needs no plotting library)."""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from ferpipe.files import atomic_path

# One colour (BGR) per class, in class order; more classes cycle.
COLOURS = [(60, 180, 75), (128, 128, 128), (200, 100, 30), (0, 140, 255), (75, 25, 230), (180, 30, 145)]
MAX_PEOPLE_CHARTED = 6  # the people seen longest; the CSV has everyone
PANEL_H, WIDTH, LEFT, TOP = 150, 900, 70, 30


class Timeline:
    """Rows of (time_s, frame, person, emotion, probabilities) as `analyze_video` yields them."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        self.rows: list[tuple[float, int, int, str, np.ndarray]] = []

    def add(self, time_s: float, frame: int, person: int, emotion: str, probs: dict[str, float]) -> None:
        self.rows.append((time_s, frame, person, emotion, np.array([probs[c] for c in self.classes])))

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["time_s", "frame", "person", "emotion", *self.classes])
        for time_s, frame, person, emotion, probs in self.rows:
            writer.writerow([f"{time_s:.3f}", frame, person, emotion, *(f"{p:.4f}" for p in probs)])
        return out.getvalue()

    def chart(self) -> np.ndarray:
        """A BGR image: one panel per person (the longest seen first), a line per class."""
        import cv2

        people = [p for p, _ in Counter(r[2] for r in self.rows).most_common(MAX_PEOPLE_CHARTED)]
        end = max((r[0] for r in self.rows), default=1.0) or 1.0
        height = TOP + max(1, len(people)) * (PANEL_H + 20) + 30
        image = np.full((height, WIDTH, 3), 255, np.uint8)
        font = cv2.FONT_HERSHEY_SIMPLEX
        for i, name in enumerate(self.classes):  # legend
            colour = COLOURS[i % len(COLOURS)]
            cv2.putText(image, name, (LEFT + 110 * i, 20), font, 0.5, colour, 1, cv2.LINE_AA)
        plot_w = WIDTH - LEFT - 20
        for k, person in enumerate(people):
            y0 = TOP + k * (PANEL_H + 20)
            cv2.rectangle(image, (LEFT, y0), (LEFT + plot_w, y0 + PANEL_H), (200, 200, 200), 1)
            cv2.putText(image, f"person {person}", (5, y0 + 15), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(image, "1", (LEFT - 15, y0 + 10), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(image, "0", (LEFT - 15, y0 + PANEL_H), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
            mine = [r for r in self.rows if r[2] == person]
            xs = np.array([LEFT + r[0] / end * plot_w for r in mine])
            for c in range(len(self.classes)):
                ys = np.array([y0 + (1 - r[4][c]) * PANEL_H for r in mine])
                points = np.stack([xs, ys], axis=1).round().astype(np.int32)
                cv2.polylines(image, [points], False, COLOURS[c % len(COLOURS)], 2, cv2.LINE_AA)
        cv2.putText(image, f"0 s{' ' * 10}time{' ' * 10}{end:.1f} s", (LEFT, height - 10), font, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
        return image

    def write(self, out_dir: Path, stem: str) -> tuple[Path, Path]:
        """<out_dir>/<stem>.timeline.csv and .timeline.png, each written atomically."""
        import cv2

        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path, png_path = out_dir / f"{stem}.timeline.csv", out_dir / f"{stem}.timeline.png"
        with atomic_path(csv_path) as tmp:
            tmp.write_text(self.to_csv())
        ok, png = cv2.imencode(".png", self.chart())
        with atomic_path(png_path) as tmp:
            tmp.write_bytes(png.tobytes())
        return csv_path, png_path
