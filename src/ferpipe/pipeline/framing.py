"""Training faces framed as `EmotionRecognizer` frames a face at use: the core decodes the
picture (OpenCV), finds the faces (the default detector) and cuts the chosen one with the one
crop function (ferpipe.inference.crop_face), so a training face and a served face come from
the same code. For sources whose images are a face with context around it (ExpW)."""
from __future__ import annotations

import numpy as np

from ferpipe.detect import find_faces
from ferpipe.errors import ImageError
from ferpipe.imageio import load_image, to_gray
from ferpipe.inference import centre_square, crop_face
from ferpipe.pipeline.images import EntryError

FRAMINGS = ("center", "detect")


def centre_half(gray: np.ndarray) -> tuple[int, int, int, int]:
    """The middle half of the picture's centred square: where such sources put the labelled face."""
    return centre_square(gray, 0.5)


def detect_and_crop(raw: bytes, image_px: int, max_pixels: int, align: bool = False
                    ) -> tuple[np.ndarray, bool]:
    """(image_px x image_px gray face, whether the detector found it).

    The face is the largest one whose centre lies in the middle half of the picture (the
    labelled face is there; others are bystanders); with none, the middle half itself.
    `align`: turned so the eyes are level, where the detector gives eye landmarks."""
    try:
        gray = to_gray(load_image(raw, max_pixels=max_pixels))
    except ImageError as err:
        reason = "too_large" if "over the limit" in str(err) else "undecodable"
        raise EntryError(str(err).split(": ", 1)[-1], reason) from None
    height, width = gray.shape
    central = [d for d in find_faces(gray)
               if width / 4 <= d.box[0] + d.box[2] / 2 <= 3 * width / 4
               and height / 4 <= d.box[1] + d.box[3] / 2 <= 3 * height / 4]
    if central:
        face = max(central, key=lambda d: d.box[2] * d.box[3])
        eyes = face.landmarks if align else None
        return crop_face(gray, face.box, image_px=image_px, eyes=eyes), True
    return crop_face(gray, centre_half(gray), image_px=image_px), False
