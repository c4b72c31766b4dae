"""People across video frames: each face box joined to the person it continues, and each
person's emotions averaged over a short window, so a clip reads as who felt what, when.

The tracker is greedy IoU matching (the association step of SORT, without its Kalman filter):
faces move little between frames at video rates, and a person who leaves for longer than
`max_missed_s` comes back as a new person. norfair, the tracker the `fer`-style tools use, was
measured as a dependency and left out: it pins NumPy below 2 and pulls SciPy, filterpy and
matplotlib (about 150 MB) into a core that is under 400 MB without them.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

Box = tuple[int, int, int, int]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    inter = max(0, w) * max(0, h)
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    person: int
    box: Box
    last_seen: float
    history: deque = field(default_factory=deque)


class FaceTracker:
    """Gives each face box a person number that stays with it across frames, and smooths
    each person's class probabilities over the last `window_s` seconds.

    `min_iou`: the overlap a box needs with a person's last box to continue them.
    `max_missed_s`: how long a person may go unseen (turned away, missed) and still continue."""

    def __init__(self, window_s: float = 0.5, min_iou: float = 0.3, max_missed_s: float = 1.0):
        if window_s < 0 or max_missed_s < 0 or not 0 < min_iou <= 1:
            raise ValueError(f"window_s and max_missed_s must be >= 0 and min_iou in (0, 1], got "
                             f"{window_s}, {max_missed_s}, {min_iou}")
        self.window_s, self.min_iou, self.max_missed_s = window_s, min_iou, max_missed_s
        self.tracks: list[_Track] = []
        self.people = 0

    def update(self, time_s: float, boxes: list[Box], probs: np.ndarray) -> tuple[list[int], np.ndarray]:
        """The person of each box and its smoothed probabilities [N, K], at `time_s`."""
        self.tracks = [t for t in self.tracks if time_s - t.last_seen <= self.max_missed_s]
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks)
                        for bi, b in enumerate(boxes)), reverse=True)
        owner: dict[int, _Track] = {}
        taken: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.min_iou:
                break
            if ti in taken or bi in owner:
                continue
            taken.add(ti)
            owner[bi] = self.tracks[ti]
        people, smoothed = [], np.zeros((len(boxes), probs.shape[1] if probs.ndim == 2 else 0), np.float32)
        for bi, box in enumerate(boxes):
            track = owner.get(bi)
            if track is None:
                self.people += 1
                track = _Track(self.people, box, time_s)
                self.tracks.append(track)
            track.box, track.last_seen = box, time_s
            track.history.append((time_s, probs[bi]))
            while track.history and time_s - track.history[0][0] > self.window_s:
                track.history.popleft()
            people.append(track.person)
            smoothed[bi] = np.mean([p for _, p in track.history], axis=0)
        return people, smoothed
