"""The public API (`from ferpipe import EmotionRecognizer`), its one inference path, the package
layout's dependency boundary, and the default face detector on real photos."""
import base64
import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data as sd

from depgraph import SRC, closure
from test_predict import ASTRONAUT_FACE, astronaut, collage, inside


@pytest.fixture(scope="module")
def recognizer():
    from ferpipe import EmotionRecognizer

    return EmotionRecognizer()


def test_every_input_form_gives_the_same_faces(recognizer, tmp_path):
    from PIL import Image

    bgr = astronaut()
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    data = (tmp_path / "a.png").read_bytes()
    forms = {"path": tmp_path / "a.png", "str": str(tmp_path / "a.png"), "bytes": data,
             "data URL": "data:image/png;base64," + base64.b64encode(data).decode(),
             "PIL": Image.open(io.BytesIO(data))}
    expected = recognizer.analyze(bgr)
    assert len(expected) == 1 and inside(expected[0].box, ASTRONAUT_FACE)
    for name, image in forms.items():
        assert recognizer.analyze(image) == expected, name
    rgb = bgr[..., ::-1]
    assert recognizer.analyze(rgb, channels="RGB") == expected
    # the channel order matters and is the caller's to state: RGB read as BGR is another picture
    wrong = recognizer.analyze(rgb, channels="BGR")[0].probabilities
    assert wrong != expected[0].probabilities


def test_a_face_is_the_json_predict_prints(recognizer):
    face = recognizer.analyze(astronaut())[0]
    row = face.to_dict()
    assert set(row) == {"box", "emotion", "probabilities", "found", "landmarks"}
    # YuNet's five points lie in the box: eyes above the nose, the nose above the mouth
    marks = row["landmarks"]
    x, y, w, h = row["box"]
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in marks.values())
    assert marks["right_eye"][0] < marks["left_eye"][0]
    assert max(marks["right_eye"][1], marks["left_eye"][1]) < marks["nose"][1] < marks["mouth_left"][1]
    assert row["emotion"] == face.emotion == max(face.probabilities, key=face.probabilities.get)
    assert json.loads(json.dumps(row)) == row and sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-3)


def test_explain_sees_the_faces_and_probabilities_predict_gives(recognizer):
    image, _ = collage()
    faces = recognizer.analyze(image)
    explained = recognizer.explain(image)
    assert [e.face for e in explained] == faces and len(faces) >= 3
    for item in explained:
        assert item.crop.shape == item.heatmap.shape == (48, 48)
        assert 0.0 <= item.heatmap.min() and item.heatmap.max() <= 1.0


def test_a_picture_that_is_already_a_face_falls_back_to_the_whole_image(recognizer):
    x, y, w, h = ASTRONAUT_FACE
    tight = astronaut()[y + 15:y + h - 15, x + 5:x + w - 5]  # the face fills the frame
    tight = cv2.resize(tight, (350, 350))
    assert recognizer.analyze(tight)[0].found in ("detected", "whole_image")
    from ferpipe import EmotionRecognizer

    strict = EmotionRecognizer(recognizer.classifier, whole_image=False)
    coffee = cv2.cvtColor(sd.coffee(), cv2.COLOR_RGB2BGR)  # 400x600: not near-square, no face
    assert recognizer.analyze(coffee) == [] and strict.analyze(coffee) == []
    square = cv2.resize(coffee, (300, 300))
    assert [f.found for f in recognizer.analyze(square)] == ["whole_image"]
    assert strict.analyze(square) == []


def test_a_loaded_classifier_gets_the_same_checks_and_faces_as_a_path(recognizer):
    from ferpipe import EmotionRecognizer, FerpipeError

    again = EmotionRecognizer(recognizer.classifier)
    assert again.classifier is recognizer.classifier
    assert again.analyze(astronaut()) == recognizer.analyze(astronaut())
    with pytest.raises(FerpipeError, match="min_face must be 1 or more"):
        EmotionRecognizer(recognizer.classifier, min_face=0)


def test_analyze_video_yields_each_analysed_frame(recognizer, tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (320, 240))
    for frame in (astronaut(), cv2.cvtColor(sd.coffee(), cv2.COLOR_RGB2BGR), astronaut()):
        writer.write(cv2.resize(frame, (320, 240)))
    writer.release()
    frames = list(recognizer.analyze_video(path, every=2))
    assert [f.index for f in frames] == [0, 2] and [len(f.faces) for f in frames] == [1, 1]
    assert frames[1].time_s == pytest.approx(0.4)


def test_bad_pictures_are_one_clear_error(recognizer, tmp_path):
    from ferpipe import ImageError

    (tmp_path / "empty.jpg").write_bytes(b"")
    huge = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\x00\x00\x00\x00"
    cases = [(tmp_path / "empty.jpg", "empty file (0 bytes)"),
             (huge, "damaged PNG image"),  # a header without its CRC: unreadable, so refused
             (b"\xff\xd8\xff\xe0 truncated", "damaged JPEG image"),
             (np.zeros((4, 4, 7), np.uint8), "expected HxW gray or HxWx3/HxWx4 colour")]
    for image, message in cases:
        with pytest.raises(ImageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            recognizer.analyze(image)
    with pytest.raises(FileNotFoundError, match="no such file"):
        recognizer.analyze(tmp_path / "missing.jpg")


def test_alpha_is_composited_on_white(recognizer):
    rgba = np.dstack([astronaut(), np.full(astronaut().shape[:2], 255, np.uint8)])
    assert recognizer.analyze(rgba) == recognizer.analyze(astronaut())


@pytest.mark.proc
def test_import_and_one_analyze_load_no_pipeline_package(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), astronaut())
    code = ("import sys, ferpipe; assert 'numpy' not in sys.modules, 'import ferpipe loads numpy'; "
            "faces = ferpipe.EmotionRecognizer().analyze(sys.argv[1]); assert faces; "
            "print([m for m in ('dvc', 'mlflow', 'keras_tuner') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.jpg")], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_the_core_never_imports_the_pipeline_the_cli_or_the_web_parts():
    package = SRC / "ferpipe"
    core = [p for p in package.glob("*.py") if p.name != "__main__.py"]
    assert len(core) >= 8
    for path in core:
        loaded = {p.relative_to(package).parts[0] for p in closure(path)}
        assert not loaded & {"pipeline", "cli", "web"}, (path.name, loaded)
    for path in [*package.glob("pipeline/*.py"), *package.glob("web/*.py")]:
        loaded = {p.relative_to(package).parts[0] for p in closure(path)}
        assert "cli" not in loaded, path  # the library never imports the CLI


def test_the_default_detector_finds_the_faces_of_a_multi_face_photo_and_a_collage():
    from ferpipe.detect import detect_faces, has_yunet, resolve

    assert resolve("auto") == ("yunet" if has_yunet() else "haar")
    image, truth = collage()
    boxes = detect_faces(image)
    assert all(any(inside(b, t) for t in truth) for b in boxes), (boxes, truth)  # no false box
    assert sum(any(inside(b, t) for b in boxes) for t in truth) == len(truth), (boxes, truth)
    group = np.hstack([cv2.resize(astronaut(), (400, 400)), cv2.resize(astronaut()[:, ::-1], (400, 400))])
    assert len(detect_faces(group)) == 2
    assert detect_faces(cv2.cvtColor(sd.coffee(), cv2.COLOR_RGB2BGR)) == []


def test_mtcnn_finds_faces_with_the_default_minimum_size():
    """mtcnn 1.0 returns nothing when its min_face_size is 26 or more; ours is 32."""
    pytest.importorskip("mtcnn")
    from ferpipe.detect import MIN_FACE_PX, detect_faces

    assert MIN_FACE_PX >= 26
    image, truth = collage()
    boxes = detect_faces(image, detector="mtcnn")
    assert sum(any(inside(b, t) for b in boxes) for t in truth) >= 3, boxes
