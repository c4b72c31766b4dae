"""Known start-up noise of TensorFlow, Keras and MLflow, silenced in one place.

Importing `ferpipe` does not load this: the entry points that train or predict from the command
line (`ferpipe.cli`, `ferpipe.pipeline`) import it before TensorFlow loads. Each setting is only a
default: `TF_CPP_MIN_LOG_LEVEL=0` shows TensorFlow's start-up messages again, and any variable set
by the user wins.

TensorFlow's C++ code writes to file descriptor 2 directly, so the filter sits on that descriptor:
from the import of `tensorflow` on, descriptor 2 is a pipe into a small forwarding process that
drops absl INFO/WARNING records below the level and writes everything else to the real stderr at
once. Nothing waits for the import to finish: a fatal error (a C++ abort, a missing shared
library) reaches the user as it is written, even when the process dies at that moment. The
forwarder is a process, not a thread of this one, because a thread dies with an aborting process
before it can write out what it has read.
"""
from __future__ import annotations

import os
import re
import sys

# How a record of absl (TensorFlow's C++ logging) starts: severity, MMDD, then a space.
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
_ABSL_START = re.compile(r"^[IWEF]\d{0,4}$")  # a partial line that may still become a record
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}

# On a machine without an NVIDIA driver the GPU build of TensorFlow logs one ERROR at the first
# op, "failed call to cuInit", just to say there is no GPU. It used to take level 3 to hide it,
# which hid TensorFlow's real errors too; now that one record is dropped by name, there only.
_HARMLESS_WITHOUT_GPU = ("failed call to cuInit",)

# While the program runs, a line that follows a dropped record may as well be the program's own
# output (a traceback, libstdc++'s "terminate called ..."): read from a pipe, the two look alike.
# Only the continuation lines TensorFlow is known to write go with a dropped record.
_CONTINUATIONS = ("To enable the following instructions:",)  # cpu_feature_guard's second line


def has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia/version")


def _filter(lines: list[str], min_level: int, drop: tuple[str, ...] = (),
            continuations: tuple[str, ...] | None = None,
            keep_record: bool = True) -> tuple[list[str], bool]:
    """`lines` without absl records below `min_level` or containing one of `drop`, and without
    absl's banner. A dropped record's continuation lines (up to the next record) go with it; with
    `continuations` given, only those that start with one of these. Returns the lines kept and
    whether the last record was (for the lines that follow)."""
    kept = []
    for line in lines:
        match = _ABSL_LINE.match(line)
        if match:
            keep_record = _SEVERITY[match[1]] >= min_level and not any(text in line for text in drop)
            keep_line = keep_record
        else:
            keep_line = keep_record or (continuations is not None and not line.startswith(continuations))
        if line.rstrip("\r\n") == _ABSL_BANNER:
            continue
        if keep_line:
            kept.append(line)
    return kept, keep_record


def drop_below(text: str, min_level: int) -> str:
    """`text` without absl log records (and their continuation lines) below `min_level`."""
    return "".join(_filter(text.splitlines(keepends=True), min_level)[0])


def _may_become_record(partial: str) -> bool:
    """Whether a line without its newline yet could still turn out to be a record to drop."""
    return bool(_ABSL_START.match(partial) or _ABSL_LINE.match(partial)
                or _ABSL_BANNER.startswith(partial.rstrip("\r")))


def _write_all(fd: int, data: bytes) -> bool:
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:  # the real stderr is gone: keep draining the pipe, write nothing
            return False
    return True


def forward(source: int, sink: int, min_level: int, drop: tuple[str, ...] = ()) -> None:
    """Copy `source` to `sink` until end of file, live, dropping what `_filter` drops.

    Lines go out as they come. A partial line is written at once unless it may still become a
    record to drop; then it waits for its newline (a progress bar that rewrites its line with \\r
    passes straight through)."""
    pending, writable, keep_record = "", True, True
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            chunk = b""
        text = pending + chunk.decode("utf-8", errors="surrogateescape")
        if not chunk:  # end of file: what is left is a last line without its newline
            lines, pending = [text] if text else [], ""
        else:
            *complete, pending = text.split("\n")
            lines = [line + "\n" for line in complete]
            if pending and (len(pending) > 65536 or not _may_become_record(pending)):
                lines.append(pending)
                pending = ""
        kept, keep_record = _filter(lines, min_level, drop, _CONTINUATIONS, keep_record)
        out = "".join(kept)
        if out and writable:
            writable = _write_all(sink, out.encode("utf-8", errors="surrogateescape"))
        if not chunk:
            return


def _min_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


_forwarder = None  # (the forwarding process, a descriptor of the real stderr, our pid) once started


def start_filter(min_level: int) -> bool:
    """Point descriptor 2 of this process (and of its future children) into the forwarder."""
    global _forwarder
    if _forwarder is not None:
        return True
    if not os.path.isfile(__file__) or not sys.executable:
        return False
    import atexit
    import subprocess

    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        real = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        return False
    drop = () if has_nvidia_driver() else _HARMLESS_WITHOUT_GPU
    read, write = os.pipe()
    try:
        # -I -S: the standard library only, whatever the environment or the current folder holds.
        process = subprocess.Popen([sys.executable, "-I", "-S", __file__, str(min_level), *drop],
                                   stdin=read, stdout=real, stderr=real)
    except OSError:
        for fd in (read, write, real):
            os.close(fd)
        return False
    os.close(read)
    os.dup2(write, 2)
    os.close(write)
    _forwarder = (process, real, os.getpid())
    atexit.register(stop_filter)
    return True


def stop_filter(timeout: float = 5.0) -> None:
    """Give descriptor 2 back to the real stderr and let the forwarder write out what it holds."""
    global _forwarder
    if _forwarder is None or _forwarder[2] != os.getpid():  # not in a forked child
        return
    process, real, _ = _forwarder
    _forwarder = None
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    os.dup2(real, 2)
    os.close(real)
    try:  # returns at once unless a child process still holds the pipe
        process.wait(timeout=timeout)
    except Exception:
        pass


def _install() -> None:
    import importlib.abc
    import importlib.util
    import logging
    import warnings

    # TensorFlow's C++ log level: 2 hides INFO and WARNING and keeps its errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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

    # uv-made environments have no pip; MLflow then warns on every model log that `pip` goes
    # unpinned into the model's conda.yaml. The model's own requirements are pinned by
    # ferpipe.pipeline.tracking.
    logging.getLogger("mlflow.utils.environment").addFilter(
        _DropMessage("Failed to resolve installed pip version"))

    # TensorFlow logs a few INFO lines (oneDNN is on, no CUDA driver found, ...) while it is
    # imported, before its logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot hide them: the filter
    # starts with the import of `tensorflow` (direct, or through keras) and stays.
    class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
        busy = False  # while asking the usual finders, which would ask this one again

        def find_spec(self, name, path=None, target=None):
            # Stays installed (a probe like importlib.util.find_spec("tensorflow") also lands
            # here); once tensorflow is in sys.modules, the import system asks no finder again.
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
                    if level > 0:
                        start_filter(level)
                    load(module)
                spec.loader.exec_module = exec_module
            return spec

    if "tensorflow" not in sys.modules and _min_level() > 0 and not any(
            type(finder).__name__ == "_QuietTensorFlowImport" for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


if __name__ == "__main__":  # the forwarder: `python -I -S quiet.py LEVEL [DROP...]`, pipe on stdin
    import signal

    if hasattr(signal, "SIGINT"):  # Ctrl-C stops the program; its last words still come through
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward(0, 1, int(sys.argv[1]), tuple(sys.argv[2:]))
else:
    _install()
