"""Grad-CAM: where in a 48x48 face the classifier looked for its answer.

`gradcam` returns one 0..1 map per face for the last convolutional feature map: the last
Conv2D of a hand-built CNN, or the output of a nested backbone (its last conv block) in a
transfer model. `gradcam_grid` draws test faces per class for the pipeline; `ferpipe
explain` writes overlays for the user's own pictures.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


import numpy as np  # noqa: E402

from ferpipe.detect import DETECTORS  # noqa: E402
from ferpipe.files import atomic_path  # noqa: E402


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
            raise ValueError(f"model '{model.name}': cannot reach the output of backbone "
                             f"'{layer.name}' in the outer graph; Grad-CAM needs a plain CNN "
                             "or a backbone followed by a pooling layer")
    raise ValueError(f"model '{model.name}' has no convolutional layer or backbone to explain")


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
        raise ValueError(f"faces must be [N, H, W] grayscale, got shape {faces.shape}")
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


def gradcam_grid(model: Any, x: np.ndarray, y: np.ndarray, classes: list[str], path: str | Path,
                 per_class: int = 4) -> Path:
    """PNG grid: a row per true class, its first `per_class` faces with the map overlaid and the
    predicted label and probability as title (green when right, red when wrong)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    x, y = np.asarray(x), np.asarray(y)
    picks = [np.flatnonzero(y == k)[:per_class] for k in range(len(classes))]
    index = np.concatenate(picks).astype(int)
    if len(index) == 0:
        raise ValueError("gradcam_grid: no faces to draw (x and y are empty or match no class)")
    probs = model(tf.constant(x[index, ..., None], tf.float32), training=False).numpy()
    maps = dict(zip(index.tolist(), gradcam(model, x[index])))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.6 * per_class, 1.75 * len(classes)),
                             squeeze=False)
    row_of = {i: n for n, i in enumerate(index.tolist())}
    for k, rows in enumerate(picks):
        for j in range(per_class):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(classes[k], fontsize=9)
            if j >= len(rows):  # fewer faces of this class than columns
                ax.set_frame_on(False)
                continue
            i = int(rows[j])
            p = probs[row_of[i]]
            ax.imshow(x[i], cmap="gray", vmin=0, vmax=255)
            ax.imshow(maps[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.set_title(f"{classes[int(p.argmax())]} {p.max():.2f}", fontsize=8,
                         color="green" if int(p.argmax()) == k else "red")
    fig.suptitle("Grad-CAM on test faces (rows: true class; titles: predicted)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


# ---- `ferpipe explain` ---------------------------------------------------------------------

EXAMPLE = """example:
  ferpipe explain photo.jpg --out gradcam/           # every detected face
  ferpipe explain face_crop.png --no-detect          # an image that is already a face crop
  ferpipe explain photo.jpg --model models:/fer-emotion@champion"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "explain", help="Grad-CAM heat maps: where the model looked, for each face",
        description="Write one PNG per face: the 48x48 face the model saw, enlarged, with its "
                    "Grad-CAM map overlaid and the predicted emotion in the file name.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (jpg, png, ...)")
    parser.add_argument("--out", default="gradcam", help="folder for the overlays (default: gradcam)")
    parser.add_argument("--model", default=None,
                        help="a .keras file or models:/NAME@ALIAS (default: models/release/model.keras)")
    parser.add_argument("--detector", choices=DETECTORS, default="auto",
                        help="face detector (default: auto = MTCNN if installed, else OpenCV Haar)")
    parser.add_argument("--no-detect", action="store_true",
                        help="treat each image as one face crop; skip face detection")
    parser.set_defaults(func=run)
    return parser


def keras_model_of(classifier: Any) -> Any:
    """The Keras model inside a loaded classifier (Grad-CAM needs its layers)."""
    for name in ("model", "keras_model", "_model"):
        model = getattr(classifier, name, None)
        if model is not None and hasattr(model, "layers"):
            return model
    raise ValueError("this model has no Keras layers to explain; pass a .keras file with --model")


def run(args: argparse.Namespace) -> int:
    """Overlays for every face of every image; a bad image is one line and the others go on."""
    import cv2

    from ferpipe.detect import detect_faces
    from ferpipe.predict import crop_face, load_classifier
    from ferpipe.predict_cli import read_image

    classifier = load_classifier(args.model)
    model = keras_model_of(classifier)
    out = Path(args.out)
    failed = 0
    for name in args.images:
        try:  # read as `ferpipe predict` reads, so both see the same pixels
            image = read_image(Path(name)) if Path(name).is_file() else None
        except OSError as err:
            image, why = None, err.strerror or "unreadable"
        else:
            why = "not found" if not Path(name).exists() else "not a readable image"
        if image is None:
            print(f"error: {name}: {why}", file=sys.stderr)
            failed += 1
            continue
        # the same crops as `ferpipe predict`: the whole image padded square, or each face found
        boxes = ([(0, 0, image.shape[1], image.shape[0])] if args.no_detect
                 else detect_faces(image, detector=args.detector))
        faces = [crop_face(image, box, 0.0 if args.no_detect else 0.2, classifier.image_px)
                 for box in boxes]
        if not faces:
            print(f"{name}: no face found (use --no-detect for an image that is a face crop)")
            continue
        faces_arr = np.stack(faces).astype(np.uint8)
        probs = classifier.predict_proba(faces_arr)
        maps = gradcam(model, faces_arr, probs.argmax(axis=1))
        for i, (face, heat, p, box) in enumerate(zip(faces_arr, maps, probs, boxes)):
            label = classifier.classes[int(p.argmax())]
            dest = out / f"{Path(name).stem}_face{i}_{label}.png"
            with atomic_path(dest) as tmp:
                if not cv2.imwrite(str(tmp), overlay(face, heat)):
                    raise OSError(f"{dest}: could not write PNG")
            print(f"{name}: face {i} box {list(map(int, box))} {label} {p.max():.2f} -> {dest}")
    return 1 if failed else 0
