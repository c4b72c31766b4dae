"""Known start-up noise of TensorFlow, Keras and MLflow, silenced in one place.

`ferpipe/__init__.py` imports this, so every entry point (stage scripts, the CLI, tests) has it
in place before TensorFlow loads. Each setting is only a default: `TF_CPP_MIN_LOG_LEVEL=0`
shows TensorFlow's start-up messages again, and any variable set by the user wins.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator


def has_nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


# TensorFlow's C++ log level: 2 hides INFO and WARNING. On a machine without an NVIDIA driver,
# the GPU build of TensorFlow logs one ERROR at the first op, "failed call to cuInit", just
# to say there is no GPU; there 3 hides it too (TensorFlow's real errors still arrive as Python
# exceptions). A GPU machine keeps 2 and uses its GPU as before.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if has_nvidia_driver() else "3")

# The trainer shuffles (seeded) inside its tf.data pipeline, so Keras rightly ignores its own
# `shuffle=True` default, and says so on every fit.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed, but will be ignored",
                        category=UserWarning)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# uv-made environments have no pip; MLflow then warns on every model log that `pip` goes unpinned
# into the model's conda.yaml. The model's own requirements are pinned by ferpipe.pipeline.tracking.
logging.getLogger("mlflow.utils.environment").addFilter(
    _DropMessage("Failed to resolve installed pip version"))

# TensorFlow logs a few INFO lines (oneDNN is on, no CUDA driver found, ...) while it is imported,
# before its logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot hide them. While `tensorflow` is
# imported, stderr goes to a file; lines below the level are dropped and the rest written back.
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def drop_below(text: str, min_level: int) -> str:
    """`text` without absl log records (and their continuation lines) below `min_level`."""
    kept, keep_record = [], True
    for line in text.splitlines(keepends=True):
        match = _ABSL_LINE.match(line)
        if match:
            keep_record = _SEVERITY[match[1]] >= min_level
        if line.rstrip("\n") == _ABSL_BANNER:
            continue
        if keep_record:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def filtered_stderr(min_level: int) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly) and write back what passes."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            rest = drop_below(capture.read().decode(errors="replace"), min_level)
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Wraps the first import of `tensorflow` (direct, or through keras) in `filtered_stderr`."""

    busy = False  # while asking the usual finders, which would ask this one again

    def find_spec(self, name, path=None, target=None):
        # Stays installed (a probe like importlib.util.find_spec("tensorflow") also lands here);
        # once tensorflow is in sys.modules, the import system asks no finder again.
        if name != "tensorflow" or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            load, level = spec.loader.exec_module, _min_level()

            def exec_module(module):
                with filtered_stderr(level):
                    load(module)
            spec.loader.exec_module = exec_module
        return spec


def _min_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


if "tensorflow" not in sys.modules and _min_level() > 0:
    sys.meta_path.insert(0, _QuietTensorFlowImport())
