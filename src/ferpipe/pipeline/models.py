"""Model builders: hand-built CNNs and ImageNet-backbone transfer models.

Every model takes raw grayscale pixels (float 0..255, shape [H, W, 1]) and returns
class probabilities; all preprocessing is made of built-in layers inside the model,
so a saved file loads with plain `keras.models.load_model`.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import keras
import numpy as np
from keras import layers

# Declared TF-free, so stages check params before importing TensorFlow; re-exported here.
from ferpipe.pipeline.params import ALPHA_BACKBONES, CNNSpec, TransferSpec

# Per-backbone constructor and how its own `preprocess_input` maps 0..255 RGB:
# "tf" -> [-1, 1]; "caffe" -> BGR minus ImageNet means; "none" -> the backbone normalises
# internally.
BACKBONES = {
    "mobilenet": (keras.applications.MobileNet, "tf"),
    "mobilenet_v2": (keras.applications.MobileNetV2, "tf"),
    "vgg16": (keras.applications.VGG16, "caffe"),
    "resnet50_v2": (keras.applications.ResNet50V2, "tf"),
    "efficientnet_b0": (keras.applications.EfficientNetB0, "none"),
}


def _activation(name: str) -> layers.Layer:
    return layers.LeakyReLU(negative_slope=0.1) if name == "leaky_relu" else layers.Activation(name)


def build_cnn(spec: CNNSpec, num_classes: int, image_px: int = 48, name: str = "cnn") -> keras.Model:
    """Conv blocks (conv -> [BN] -> act, xN; max-pool; [dropout]) and a dense head."""
    reg = keras.regularizers.l2(spec.l2) if spec.l2 else None
    inputs = keras.Input((image_px, image_px, 1), name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in spec.filters:
        for _ in range(spec.convs_per_block):
            x = layers.Conv2D(filters, spec.kernel, padding="same", use_bias=not spec.batch_norm,
                              kernel_regularizer=reg)(x)
            if spec.batch_norm:
                x = layers.BatchNormalization()(x)
            x = _activation(spec.activation)(x)
        x = layers.MaxPooling2D()(x)
        if spec.block_dropout:
            x = layers.Dropout(spec.block_dropout)(x)
    x = layers.Flatten()(x) if spec.head == "flatten" else layers.GlobalAveragePooling2D()(x)
    for units in spec.dense_units:
        x = layers.Dense(units, use_bias=not spec.batch_norm, kernel_regularizer=reg)(x)
        if spec.batch_norm:
            x = layers.BatchNormalization()(x)
        x = _activation(spec.activation)(x)
        if spec.dense_dropout:
            x = layers.Dropout(spec.dense_dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def preprocessing_layers(mode: str) -> list[layers.Layer]:
    """Built-in layers equal to a backbone's `preprocess_input` on gray-as-RGB 0..255."""
    if mode == "tf":
        return [layers.Rescaling(1.0 / 127.5, offset=-1.0)]
    if mode == "caffe":  # channel order is moot for gray, the means are not
        return [layers.Normalization(mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0])]
    return []


def resolve_weights(weights: str) -> str | None:
    """A local weights file (must exist), "imagenet" (download) or none."""
    if weights in ("imagenet", "none", ""):
        return None if weights in ("none", "") else "imagenet"
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"weights file '{weights}' not found: run `dvc pull`, or put the official Keras "
            f"'_no_top' .h5 file there, or set weights: imagenet where a network exists")
    return weights


def build_backbone(spec: TransferSpec) -> keras.Model:
    constructor, _ = BACKBONES[spec.backbone]
    kwargs = {"alpha": spec.alpha} if spec.backbone in ALPHA_BACKBONES else {}
    return constructor(input_shape=(spec.input_px, spec.input_px, 3), include_top=False,
                       weights=resolve_weights(spec.weights), **kwargs)


def build_transfer(spec: TransferSpec, num_classes: int, image_px: int = 48,
                   name: str = "transfer") -> tuple[keras.Model, keras.Model]:
    """(model, backbone). Gray -> upscale -> 3 channels -> backbone's preprocessing."""
    backbone = build_backbone(spec)
    backbone.trainable = False
    inputs = keras.Input((image_px, image_px, 1), name="pixels")
    x = layers.Resizing(spec.input_px, spec.input_px, interpolation="bilinear")(inputs)
    x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    for layer in preprocessing_layers(BACKBONES[spec.backbone][1]):
        x = layer(x)
    # training=False keeps batch-norm statistics frozen, also while fine-tuning.
    x = backbone(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(spec.dropout)(x)
    x = layers.Dense(spec.dense_units, activation="relu")(x)
    x = layers.Dropout(spec.dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name), backbone


def unfreeze_top(backbone: keras.Model, n_layers: int) -> int:
    """Make the top `n_layers` trainable, batch-norm layers excepted; returns how many."""
    backbone.trainable = True
    cut = len(backbone.layers) - n_layers
    count = 0
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
        count += int(layer.trainable and bool(layer.weights))
    return count


def with_flip_tta(model: keras.Model) -> keras.Model:
    """`model` averaged over the image and its mirror, from built-in layers only.

    The mirror is a frozen Dense layer holding the anti-identity matrix over the width axis:
    exact on pixel values, and `keras.models.load_model` needs no custom code to load it."""
    side = int(model.input_shape[2])
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    rows = layers.Reshape((int(model.input_shape[1]), side), name="drop_channel")(inputs)
    mirror = layers.Dense(side, use_bias=False, trainable=False, name="mirror_width")
    mirrored = layers.Reshape(tuple(model.input_shape[1:]), name="add_channel")(mirror(rows))
    mirror.set_weights([np.eye(side, dtype="float32")[::-1]])
    averaged = layers.Average(name="tta_mean")([model(inputs), model(mirrored)])
    return keras.Model(inputs, averaged, name=f"{model.name}_flip_tta")


# One compiled function per model, kept as long as the model: a new tf.function per call traced
# the model again every time ("5 out of the last 5 calls ... triggered tf.function retracing").
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict_probs(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 faces [N, px, px] -> float64 probabilities [N, K], in batches through one compiled
    function per model (model.predict is far slower)."""
    import tensorflow as tf

    infer = _COMPILED.get(model)
    if infer is None:
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        infer = _COMPILED[model] = tf.function(lambda batch: model(batch, training=False),
                                               input_signature=[spec], autograph=False)
    parts = [infer(tf.constant(x[i:i + batch_size, ..., None], tf.float32)).numpy()
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float64)
