"""The wheel carries the released model: installed into a fresh virtualenv outside the repo,
`ferpipe predict` works on a real photo with no pipeline, DVC or MLflow."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import ROOT
from test_predict import astronaut

pytestmark = pytest.mark.slow


def uv() -> str:
    return shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")


@pytest.mark.proc
def test_the_wheel_installs_and_predicts_outside_the_repo(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    build = subprocess.run([uv(), "build", "--wheel", "--out-dir", str(tmp_path / "dist")], cwd=ROOT,
                           capture_output=True, text=True, env=env, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ferpipe-*.whl")
    venv = tmp_path / "venv"
    for argv in ([uv(), "venv", "-q", "--python", sys.executable, str(venv)],
                 [uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    cv2.imwrite(str(work / "photo.jpg"), astronaut())
    proc = subprocess.run([str(venv / "bin" / "ferpipe"), "predict", "photo.jpg"], cwd=work,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["emotion"] for r in rows] == ["happy"]
    listed = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import importlib.util as u; print([m for m in ('dvc', 'mlflow', 'keras_tuner', "
                             "'tensorflow', 'keras', 'sklearn', 'yaml') if u.find_spec(m)])"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert listed.stdout.strip() == "[]"  # the core installs none of the pipeline's packages
    (work / "faces" / "happy").mkdir(parents=True)  # `ferpipe score` reads folders without them
    shutil.copy(ROOT / "models" / "release" / "sample_face.png", work / "faces" / "happy" / "a.png")
    scored = subprocess.run([str(venv / "bin" / "ferpipe"), "score", "faces", "--json"], cwd=work,
                            capture_output=True, text=True, env=env, timeout=600)
    assert scored.returncode == 0 and json.loads(scored.stdout)["images"] == 1, scored.stderr[-2000:]
    assert proc.stderr == ""  # nothing from third parties on the user's stderr

