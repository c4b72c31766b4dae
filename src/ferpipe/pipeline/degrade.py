"""Degradation augmentation: training faces made to look like everyday pictures (small, blurred,
dark or bright, noisy, partly covered), each image with probability `p`, inside the trainer's
input pipeline. Seeded stateless ops, one seed pair per batch, so a run is repeatable.

The kinds, each drawn per image: downscale to 14-32 px and back (faces of 30-60 px in a photo,
as the detector crops them), a Gaussian blur (sigma 1), gamma 0.6-1.6 (low light and glare),
Gaussian noise (sigma up to 8 grey levels), and an erased rectangle of 15-40% of the side (a
hand, glasses, hair)."""
from __future__ import annotations

import tensorflow as tf

_BLUR = tf.constant([1, 4, 6, 4, 1], tf.float32) / 16.0  # binomial: a Gaussian of sigma 1


def _blur(images: tf.Tensor) -> tf.Tensor:
    kernel = tf.reshape(_BLUR[:, None] * _BLUR[None, :], [5, 5, 1, 1])
    return tf.nn.conv2d(tf.pad(images, [[0, 0], [2, 2], [2, 2], [0, 0]], "SYMMETRIC"), kernel, 1, "VALID")


def degrade_batch(images: tf.Tensor, seed: tf.Tensor, p: float) -> tf.Tensor:
    """float32 [N, H, W, 1] pixels 0..255 -> the same with each kind applied to each image with
    probability `p`; `seed`: int64 [2] for this batch."""
    n, side = tf.shape(images)[0], tf.shape(images)[1]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 9)
    uniform = [tf.random.stateless_uniform([n, 1, 1, 1], s) for s in tf.unstack(seeds)]
    chosen = [u < p for u in uniform[:5]]
    low = tf.cast(14 + tf.floor(uniform[5][0, 0, 0, 0] * 19), tf.int32)  # one size a batch: 14..32
    small = tf.image.resize(tf.image.resize(images, [low, low], "area"), [side, side], "bilinear")
    out = tf.where(chosen[0], small, images)
    out = tf.where(chosen[1], _blur(out), out)
    gamma = tf.exp(tf.math.log(0.6) + uniform[6] * (tf.math.log(1.6) - tf.math.log(0.6)))
    out = tf.where(chosen[2], 255.0 * tf.pow(tf.clip_by_value(out / 255.0, 0.0, 1.0), gamma), out)
    noise = tf.random.stateless_normal(tf.shape(out), seeds[7]) * (8.0 * uniform[7])
    out = tf.where(chosen[3], out + noise, out)
    # An erased rectangle: a box of 15-40% of the side at a random place, filled with mid-grey.
    box = tf.cast(tf.cast(side, tf.float32) * (0.15 + 0.25 * uniform[8]), tf.int32)
    corner = tf.random.stateless_uniform([n, 2], seeds[8], 0.0, 1.0)
    start = tf.cast(corner * tf.cast(side - box[:, 0, 0, :], tf.float32), tf.int32)
    grid = tf.range(side)
    rows = (grid[None, :] >= start[:, :1]) & (grid[None, :] < start[:, :1] + box[:, 0, 0, :])
    cols = (grid[None, :] >= start[:, 1:]) & (grid[None, :] < start[:, 1:] + box[:, 0, 0, :])
    covered = (rows[:, :, None] & cols[:, None, :])[..., None] & chosen[4]
    out = tf.where(covered, 128.0, out)
    return tf.clip_by_value(out, 0.0, 255.0)
