"""ferpipe.quiet filters TensorFlow's C++ start-up lines live: a fatal error reaches the user even
when TensorFlow aborts the process, and `import ferpipe` alone changes nothing."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

FATAL = "F0000 00:00:1 fatal: something broke"
INFO = "I0000 00:00:1795774467.163606    9350 port.cc:153] oneDNN custom operations are on."
ERROR = "E0000 00:00:1795774502.194235    9350 some_op.cc:52] real error"
CUINIT = "E0000 00:00:1795774502.194235    9350 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)"


def fake_tensorflow(tmp_path: Path, body: str) -> Path:
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import os\n" + textwrap.dedent(body))
    return tmp_path / "fake"


def run(code: str, fake: Path | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (fake, SRC) if p is not None)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("death", ["os._exit(134)", "os.abort()"])
def test_a_fatal_error_while_tensorflow_is_imported_reaches_stderr(tmp_path, death):
    fake = fake_tensorflow(tmp_path, f"""
        os.write(2, b"{INFO}\\n")
        os.write(2, b"{FATAL}\\n")
        {death}
    """)
    proc = run("import ferpipe.quiet\nimport tensorflow\nprint('survived')", fake)
    assert proc.returncode != 0 and "survived" not in proc.stdout
    assert FATAL in proc.stderr, proc.stderr
    assert "oneDNN" not in proc.stderr, proc.stderr


def test_info_lines_are_dropped_and_errors_kept_as_they_come(tmp_path):
    fake = fake_tensorflow(tmp_path, f"""
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"{INFO}\\n")
        os.write(2, b"W0000 00:00:1795774467.2    9350 cpu_feature_guard.cc:227] This TensorFlow binary\\n"
                    b"To enable the following instructions: AVX2 FMA, rebuild\\n")
        os.write(2, b"{ERROR}\\n")
        os.write(2, b"{CUINIT}\\n")
        os.write(2, b"progress 50%\\r")  # a partial line that cannot be a record passes at once
    """)
    code = ("import ferpipe.quiet, os, sys\nimport tensorflow\n"
            "print('imported', os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
            "print('after the import', file=sys.stderr)\n")
    proc = run(code, fake)
    assert proc.returncode == 0 and "imported 2" in proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert ERROR in lines and "after the import" in proc.stderr, proc.stderr
    for noise in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "To enable the following"):
        assert noise not in proc.stderr, proc.stderr
    assert "progress 50%" in proc.stderr
    # The harmless cuInit record is dropped only where there is no NVIDIA driver to report on.
    assert (CUINIT in lines) == Path("/proc/driver/nvidia/version").exists(), proc.stderr


@pytest.mark.proc
def test_the_forwarder_passes_output_through_while_the_process_runs(tmp_path):
    """Live: an error written during the import is on stderr before the import has finished."""
    fake = fake_tensorflow(tmp_path, f"""
        import time
        os.write(2, b"{ERROR}\\n")
        deadline = time.monotonic() + 60
        while not os.path.exists({str(tmp_path / 'seen')!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join([str(fake), str(SRC)])
    proc = subprocess.Popen([sys.executable, "-c", "import ferpipe.quiet, tensorflow"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().rstrip("\n") == ERROR  # read while the import still waits
        (tmp_path / "seen").touch()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.stderr.close()


def test_the_users_level_wins(tmp_path):
    fake = fake_tensorflow(tmp_path, f'os.write(2, b"{INFO}\\n")\n')
    proc = run("import ferpipe.quiet, tensorflow", fake, TF_CPP_MIN_LOG_LEVEL="0")
    assert proc.returncode == 0 and INFO in proc.stderr, proc.stderr


def test_importing_ferpipe_changes_nothing():
    code = ("import os, sys\nbefore = list(sys.meta_path)\nimport ferpipe\n"
            "assert 'TF_CPP_MIN_LOG_LEVEL' not in os.environ, os.environ['TF_CPP_MIN_LOG_LEVEL']\n"
            "assert sys.meta_path == before, sys.meta_path\n"
            "assert 'ferpipe.quiet' not in sys.modules and 'tensorflow' not in sys.modules\n"
            "print('clean')")
    proc = run(code)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr


def test_a_dropped_record_takes_only_its_known_continuation_lines_along():
    from ferpipe.quiet import forward

    read, write = os.pipe()
    out_read, out_write = os.pipe()
    os.write(write, (f"{INFO}\n"
                     "I0000 00:00:1.2    9350 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
                     "To enable the following instructions: AVX2 FMA, rebuild TensorFlow\n"
                     "terminate called after throwing an instance of 'std::runtime_error'\n"
                     f"{ERROR}\n"
                     "  a continuation of the error\n"
                     "no newline at the end").encode())
    os.close(write)
    forward(read, out_write, 2)
    os.close(read)
    os.close(out_write)
    with os.fdopen(out_read) as out:
        assert out.read() == ("terminate called after throwing an instance of 'std::runtime_error'\n"
                              f"{ERROR}\n  a continuation of the error\nno newline at the end")
