"""Grad-CAM: where in a 48x48 face the classifier looked for its answer.

`gradcam` returns one 0..1 map per face for the last convolutional feature map: the last
Conv2D of a hand-built CNN, or the output of a nested backbone (its last conv block) in a
transfer model. The pipeline draws a grid of test faces with them (ferpipe.pipeline.evaluate);
`EmotionRecognizer.explain` and `ferpipe explain` give them for the user's own pictures.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ferpipe.errors import ModelError


def target_output(model: Any) -> Any:
    """The last spatial feature map, as a tensor of `model`'s graph: a conv layer's output, or
    the output of a nested model (a backbone: its last conv block's activation)."""
    import keras

    for i in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[i]
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D
                      | keras.layers.SeparableConv2D):
            return layer.output
        if isinstance(layer, keras.Model) and len(layer.output.shape) == 4:
            # `layer.output` lives in the backbone's own graph; the outer graph's copy is
            # what the next layer (the pooling head) takes in.
            after = model.layers[i + 1].input if i + 1 < len(model.layers) else None
            if isinstance(after, keras.KerasTensor) and len(after.shape) == 4:
                return after
            raise ModelError(f"model '{model.name}': cannot reach the output of backbone "
                             f"'{layer.name}' in the outer graph; Grad-CAM needs a plain CNN "
                             "or a backbone followed by a pooling layer")
    raise ModelError(f"model '{model.name}' has no convolutional layer or backbone to explain")


def explained_model(model: Any) -> Any:
    """`model`, or the one classifier inside a wrapper that has no conv layer of its own (flip
    test-time augmentation: the classifier on the image and on its mirror, averaged), which is
    then explained on the image as given."""
    import keras

    try:
        target_output(model)
        return model
    except ValueError:
        inner = [layer for layer in model.layers
                 if isinstance(layer, keras.Model) and len(layer.output.shape) == 2]
        if len(inner) != 1:
            raise
        return explained_model(inner[0])  # the release may itself be such a wrapper


def _score_model(model: Any, features: Any) -> Any:
    """Model: pixels -> (feature map, class scores). Scores are pre-softmax logits where the
    head is a softmax Dense (gradients of saturated probabilities vanish), else probabilities."""
    import keras

    head = model.layers[-1]
    if isinstance(head, keras.layers.Dense) and getattr(head.activation, "__name__", "") == "softmax":
        return keras.Model(model.inputs, [features, head.input]), head
    return keras.Model(model.inputs, [features, model.output]), None


def gradcam(model: Any, faces: np.ndarray, class_index: int | np.ndarray | None = None,
            batch_size: int = 64) -> np.ndarray:
    """Grad-CAM maps float32 [N, 48, 48] in 0..1 for uint8 faces [N, 48, 48].

    `class_index`: one class for all faces, one per face, or None for each face's
    predicted class. A face whose map is zero everywhere (no positive evidence) stays zero."""
    import tensorflow as tf

    faces = np.asarray(faces)
    if faces.ndim != 3:
        raise ModelError(f"faces must be [N, H, W] grayscale, got shape {faces.shape}")
    inner = explained_model(model)
    if inner is not model and class_index is None and len(faces):  # the wrapper's answer
        class_index = np.concatenate([model(tf.constant(faces[i:i + batch_size, ..., None], tf.float32),
                                            training=False).numpy().argmax(axis=1)
                                      for i in range(0, len(faces), batch_size)])
    scorer, head = _score_model(inner, target_output(inner))
    wanted = None if class_index is None else np.broadcast_to(np.asarray(class_index), (len(faces),))
    maps = []
    for start in range(0, len(faces), batch_size):
        x = tf.constant(faces[start:start + batch_size, ..., None], tf.float32)
        with tf.GradientTape() as tape:
            features, out = scorer(x, training=False)
            scores = tf.matmul(out, head.kernel) + head.bias if head is not None else out
            picked = (tf.argmax(scores, axis=1) if wanted is None
                      else tf.constant(wanted[start:start + batch_size], tf.int64))
            chosen = tf.gather(scores, picked, axis=1, batch_dims=1)
        grads = tape.gradient(chosen, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., None]
        cam = tf.image.resize(cam, faces.shape[1:3], method="bilinear")[..., 0].numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
        maps.append(np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0))
    return np.concatenate(maps).astype(np.float32) if maps else np.zeros((0,) + faces.shape[1:], np.float32)


def overlay(face: np.ndarray, heatmap: np.ndarray, size: int = 192, alpha: float = 0.45) -> np.ndarray:
    """BGR uint8 [size, size, 3]: the gray face with the map in the jet colour scale on top."""
    import cv2

    face = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    heat = cv2.resize((heatmap * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(face, cv2.COLOR_GRAY2BGR), 1 - alpha, colour, alpha, 0)
