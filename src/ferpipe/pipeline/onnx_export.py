"""The released model as ONNX: converted with tf2onnx, names made canonical, checked against Keras.

tf2onnx names nodes and tensors with process-wide counters ("Conv__66"), so two exports of the
same model differ in their bytes. Every name but the graph's input and output is replaced by
its position in the (already topological) node list, which makes the file a function of the
weights and the graph alone: same params, same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ferpipe.files import atomic_path
from ferpipe.inference import INPUT_NAME, ONNX_INPUT_CONTRACT, OUTPUT_NAME
from ferpipe.pipeline.config import PipelineError

OPSET = 17


def _canonical_names(proto: Any) -> None:
    """Rename nodes, initializers and intermediate tensors by position (inputs/outputs kept)."""
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    renamed: dict[str, str] = {}
    # Initializers by first use: tf2onnx lists them in an order that depends on its counters.
    weights = {init.name for init in graph.initializer}
    for node in graph.node:
        for name in node.input:
            if name in weights and name not in renamed:
                renamed[name] = f"w{len(renamed)}"
    used = [init for init in graph.initializer if init.name in renamed]  # unused ones are dropped
    order = sorted(used, key=lambda init: int(renamed[init.name][1:]))
    inits = [type(order[0])() for _ in order] if order else []
    for copy, init in zip(inits, order):
        copy.CopyFrom(init)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}_{node.op_type}"
        for j, out in enumerate(node.output):
            if out and out not in keep:
                renamed.setdefault(out, f"t{i}_{j}")
    for init in graph.initializer:
        init.name = renamed[init.name]
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)
    for value in (*graph.input, *graph.output):  # tf2onnx's symbolic batch dims ("unk__92")
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.name = "ferpipe"  # tf2onnx names it (and its doc string) after a traced function
    graph.doc_string = ""  # with a process-wide counter
    proto.producer_version = ""  # the converter's version is in the card, not in the bytes


def to_onnx(model: Any, classes: list[str], path: Path) -> Path:
    """Write `model` (a Keras model taking [N, px, px, 1] raw gray pixels) to `path` as ONNX
    with the classes and input contract in its metadata; the bytes depend on the model only."""
    import tensorflow as tf
    import tf2onnx

    px = int(model.input_shape[1])
    spec = (tf.TensorSpec([None, px, px, 1], tf.float32, name=INPUT_NAME),)
    forward = tf.function(lambda x: {OUTPUT_NAME: model(x, training=False)}, input_signature=spec,
                          autograph=False)
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET)
    _canonical_names(proto)
    del proto.metadata_props[:]
    for key, value in {"classes": json.dumps(list(classes)), "image_px": str(px),
                       "input": ONNX_INPUT_CONTRACT}.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString(deterministic=True))
    return path


def parity(model: Any, onnx_path: Path, faces: np.ndarray, batch: int = 256) -> dict:
    """How far ONNX Runtime's probabilities are from Keras's on `faces` [N, px, px] uint8."""
    from ferpipe.inference import load_classifier

    runtime = load_classifier(str(onnx_path))
    worst, changed = 0.0, 0
    for start in range(0, len(faces), batch):
        chunk = faces[start:start + batch]
        expected = np.asarray(model(chunk[..., None].astype(np.float32), training=False))
        got = runtime.predict_proba(chunk)
        worst = max(worst, float(np.abs(expected - got).max()))
        changed += int((expected.argmax(1) != got.argmax(1)).sum())
    return {"onnx_max_abs_diff": worst, "onnx_changed_predictions": changed, "onnx_faces": int(len(faces))}


def check_parity(result: dict, max_abs_diff: float, where: str) -> None:
    """Refuse a release whose ONNX file does not give the Keras model's answers."""
    if result["onnx_changed_predictions"] or result["onnx_max_abs_diff"] > max_abs_diff:
        raise PipelineError(f"{where}: ONNX and Keras disagree on the test splits "
                            f"(largest probability difference {result['onnx_max_abs_diff']:.2e}, "
                            f"release.onnx_max_abs_diff={max_abs_diff:g}; "
                            f"{result['onnx_changed_predictions']} changed predictions)")
