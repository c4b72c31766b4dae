"""`ferpipe predict` and `ferpipe score` on real photos (scikit-image, matplotlib), a collage,
a video written with OpenCV, and the released model; user errors are one line on stderr."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data as sd

from conftest import ROOT

RELEASE = ROOT / "models" / "release"
HOPPER = Path(cv2.__file__).parents[1] / "matplotlib" / "mpl-data" / "sample_data" / "grace_hopper.jpg"
ASTRONAUT_FACE = (182, 64, 83, 107)  # checked by eye
HOPPER_FACE = (178, 110, 173, 220)


def astronaut() -> np.ndarray:
    return cv2.cvtColor(sd.astronaut(), cv2.COLOR_RGB2BGR)


def inside(box, truth) -> bool:
    """The centre of `box` lies in `truth`: the box is on that face."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return truth[0] <= cx <= truth[0] + truth[2] and truth[1] <= cy <= truth[1] + truth[3]


def collage() -> tuple[np.ndarray, list]:
    """Four real faces, 35 to 130 px, on a gray canvas; returns it and the true face boxes."""
    canvas = np.full((620, 940, 3), 90, np.uint8)
    truth = []
    for image, face, scale, (x, y) in ((astronaut(), ASTRONAUT_FACE, 1.0, (0, 0)),
                                       (cv2.imread(str(HOPPER)), HOPPER_FACE, 0.6, (520, 0)),
                                       (astronaut(), ASTRONAUT_FACE, 0.42, (520, 362)),
                                       (cv2.imread(str(HOPPER)), HOPPER_FACE, 0.3, (750, 370))):
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
        truth.append(tuple(round(v * scale) + o for v, o in zip(face, (x, y, 0, 0))))
    return canvas, truth


@pytest.fixture(scope="module")
def classifier():
    from ferpipe.inference import load_classifier

    return load_classifier(None)


@pytest.fixture
def cli(classifier, monkeypatch, capsys):
    """Run `ferpipe ARGS` in-process (the default model loads once); returns (rc, out lines, err lines)."""
    import ferpipe.recognizer
    from ferpipe.cli import main

    real = ferpipe.recognizer.load_classifier
    monkeypatch.setattr(ferpipe.recognizer, "load_classifier",
                        lambda ref=None: classifier if ref is None else real(ref))

    def call(*args: str):
        capsys.readouterr()  # only what this command prints
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out.splitlines(), err.splitlines()
    return call


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """photos/ (astronaut, coffee, collage), clip.avi (6 frames), notes.txt, broken.jpg."""
    root = tmp_path_factory.mktemp("media")
    (root / "photos").mkdir()
    cv2.imwrite(str(root / "photos" / "astronaut.jpg"), astronaut())
    cv2.imwrite(str(root / "photos" / "coffee.png"), cv2.cvtColor(sd.coffee(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "photos" / "collage.png"), collage()[0])
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (320, 240))
    face, empty = cv2.resize(astronaut(), (320, 240)), cv2.resize(cv2.cvtColor(sd.coffee(), cv2.COLOR_RGB2BGR), (320, 240))
    for frame in (face, face, empty, face, face, empty):
        writer.write(frame)
    writer.release()
    (root / "notes.txt").write_text("not a picture\n")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


def test_crop_face_pads_at_the_border_and_keeps_an_exact_crop():
    from ferpipe.inference import crop_face

    face = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    np.testing.assert_array_equal(crop_face(face, (0, 0, 48, 48), margin=0.0), face)
    corner = crop_face(astronaut(), (0, 0, 60, 60), margin=0.2)
    assert corner.shape == (48, 48) and corner.dtype == np.uint8


@pytest.mark.parametrize("degrees", [-35, -10, 20, 40])
def test_crop_face_with_eyes_turns_them_level_about_the_box_centre(degrees):
    from ferpipe.inference import crop_face

    picture = np.zeros((200, 200), np.uint8)
    a = np.radians(degrees)
    eyes = ((100 - 30 * np.cos(a), 100 - 30 * np.sin(a)), (100 + 30 * np.cos(a), 100 + 30 * np.sin(a)))
    for x, y in eyes:
        cv2.circle(picture, (round(x), round(y)), 4, 255, -1)
    level = crop_face(picture, (50, 50, 100, 100), image_px=100, eyes=eyes)
    rows, cols = np.nonzero(level > 128)
    left = cols < 50
    assert abs(rows[left].mean() - 50) < 1 and abs(rows[~left].mean() - 50) < 1
    assert abs(cols[left].mean() - 20) < 1 and abs(cols[~left].mean() - 80) < 1
    # level eyes: the very crop made without them
    flat = ((70.0, 100.0), (130.0, 100.0))
    np.testing.assert_array_equal(crop_face(picture, (50, 50, 100, 100), eyes=flat),
                                  crop_face(picture, (50, 50, 100, 100)))


def test_astronaut_is_one_happy_face_in_colour_and_gray(classifier):
    from ferpipe.recognizer import EmotionRecognizer

    recognizer = EmotionRecognizer(classifier)
    for image in (astronaut(), cv2.cvtColor(astronaut(), cv2.COLOR_BGR2GRAY)):
        faces = recognizer.analyze(image)
        assert len(faces) == 1 and inside(faces[0].box, ASTRONAUT_FACE)
        assert faces[0].emotion == "happy" and faces[0].found == "detected"
        assert set(faces[0].probabilities) == set(classifier.classes)


def test_collage_finds_faces_at_several_scales():
    from ferpipe.detect import detect_faces

    image, truth = collage()
    boxes = detect_faces(image)
    assert all(any(inside(b, t) for t in truth) for b in boxes), (boxes, truth)  # no false face
    assert sum(any(inside(b, t) for b in boxes) for t in truth) >= 3, (boxes, truth)
    assert detect_faces(cv2.cvtColor(sd.coffee(), cv2.COLOR_RGB2BGR)) == []


def test_predict_proba_matches_the_release_samples(classifier):
    samples = np.load(RELEASE / "samples.npz")
    for faces in (samples["x"], samples["x"][..., None]):
        probs = classifier.predict_proba(faces)
        assert probs.dtype == np.float32 and probs.shape == (8, len(classifier.classes))
        np.testing.assert_allclose(probs, samples["probs"], atol=1e-4)
    assert classifier.predict_proba(np.zeros((0, 48, 48), np.uint8)).shape == (0, 4)


def test_predict_folder_annotates_and_reports_bad_files_in_one_line(cli, media, tmp_path):
    out = tmp_path / "annotated"
    rc, lines, err = cli("predict", media / "photos", media / "notes.txt", media / "broken.jpg",
                         tmp_path / "missing.jpg", "--annotate", out)
    assert rc == 1
    assert err == [f"error: {media / 'notes.txt'}: not an image or a video OpenCV can read",
                   f"error: {media / 'broken.jpg'}: damaged JPEG image",
                   f"error: {tmp_path / 'missing.jpg'}: no such file or folder"]
    rows = [json.loads(line) for line in lines]
    by_file = {}
    for row in rows:
        by_file.setdefault(Path(row["file"]).name, []).append(row)
    assert by_file["coffee.png"] == [{"file": str(media / "photos" / "coffee.png"), "faces": 0}]
    assert [r["emotion"] for r in by_file["astronaut.jpg"]] == ["happy"]
    assert len(by_file["collage.png"]) >= 3
    for row in by_file["collage.png"]:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    for name in ("astronaut.jpg", "coffee.png", "collage.png"):
        drawn, original = cv2.imread(str(out / name)), cv2.imread(str(media / "photos" / name))
        assert drawn.shape == original.shape
    assert not np.array_equal(cv2.imread(str(out / "collage.png")), cv2.imread(str(media / "photos" / "collage.png")))


def test_a_phone_photo_stored_sideways_is_read_upright(cli, tmp_path):
    """Phones store pixels as the sensor saw them and an EXIF tag saying how to turn them."""
    from PIL import Image

    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(sd.astronaut(), k=1)))
    exif = sideways.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    sideways.save(tmp_path / "phone.jpg", "JPEG", quality=95, exif=exif.tobytes())
    rc, lines, _ = cli("predict", tmp_path / "phone.jpg")
    faces = [json.loads(line) for line in lines]
    assert rc == 0 and len(faces) == 1 and faces[0]["emotion"] == "happy"
    assert inside(faces[0]["box"], ASTRONAUT_FACE)  # in the upright picture's coordinates


def test_predict_video_gives_per_frame_lines_and_a_summary(cli, media, tmp_path):
    rc, lines, err = cli("predict", media / "clip.avi", "--every", "2", "--annotate", tmp_path)
    assert rc == 0, err
    rows = [json.loads(line) for line in lines]
    summary = rows[-1]["summary"]
    frames = [r for r in rows[:-1]]
    assert [r["frame"] for r in frames] == [0, 2, 4]  # frame 2 is the coffee cup
    assert [r.get("emotion") for r in frames] == ["happy", None, "happy"]
    assert frames[1]["faces"] == 0 and frames[2]["time_s"] == pytest.approx(0.8)
    assert summary["frames"] == 6 and summary["frames_analyzed"] == 3 and summary["faces"] == 2
    assert summary["emotions"]["happy"] == 2 and summary["frames_without_face"] == 1
    assert summary["fps"] > 0
    video, frames = cv2.VideoCapture(str(tmp_path / "clip.mp4")), 0  # VP9 in MP4: browsers play it
    while video.read()[0]:
        frames += 1
    assert frames == 3


def test_no_detect_classifies_whole_images_as_crops(cli, tmp_path):
    samples = np.load(RELEASE / "samples.npz")
    for i, face in enumerate(samples["x"][:3]):
        cv2.imwrite(str(tmp_path / f"face{i}.png"), face)
    rc, lines, _ = cli("predict", tmp_path, "--no-detect")
    rows = [json.loads(line) for line in lines]
    assert rc == 0 and [r["box"] for r in rows] == [[0, 0, 48, 48]] * 3
    for row, probs in zip(rows, samples["probs"]):
        assert list(row["probabilities"].values()) == pytest.approx(probs.tolist(), abs=1e-3)


def test_bad_model_paths_are_one_line_and_debug_shows_the_traceback(cli, media, tmp_path):
    photo = media / "photos" / "astronaut.jpg"
    rc, lines, err = cli("predict", photo, "--model", tmp_path / "nope.keras")
    assert rc == 1 and lines == []
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'nope.keras'}: no such model file")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    rc, _, err = cli("predict", photo, "--model", tmp_path / "junk.keras")
    assert rc == 1 and len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'junk.keras'}: cannot load the model")
    rc, _, err = cli("--debug", "predict", photo, "--model", tmp_path / "junk.keras")
    assert rc == 1 and err[0].startswith("Traceback")


def write_labelled(root: Path, layout: dict[str, list[int]], x: np.ndarray) -> None:
    for folder, indices in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in indices:
            cv2.imwrite(str(root / folder / f"{i}.png"), x[i])


def test_score_counts_a_labelled_folder_exactly(cli, tmp_path):
    from sklearn.metrics import confusion_matrix

    samples = np.load(RELEASE / "samples.npz")
    # The labels are the folders (chosen here); the model's predictions are the stored ones.
    layout = {"happy": [0, 1, 2, 3], "sad": [4, 5], "neutral": [6, 7], "angry": [0]}
    write_labelled(tmp_path / "flat", layout, samples["x"])
    (tmp_path / "flat" / "happy" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    y = [0, 0, 0, 0, 2, 2, 1, 1]
    pred = samples["probs"].argmax(axis=1)
    rc, lines, err = cli("score", tmp_path / "flat", "--json")
    result = json.loads(lines[0])
    assert rc == 1 and result["images"] == 8  # the broken file is named, the others scored
    assert err == [f"error: {tmp_path / 'flat' / 'happy' / 'broken.png'}: damaged PNG image"]
    assert result["accuracy"] == pytest.approx(np.mean(pred == y))
    assert result["confusion"]["matrix"] == confusion_matrix(y, pred, labels=[0, 1, 2, 3]).tolist()
    assert result["per_class"]["happy"]["support"] == 4 and result["skipped"]["other_class"] == {"angry": 1}
    # <split>/<class>/ layout: the same images under test/, one more under train/
    write_labelled(tmp_path / "split" / "test", layout, samples["x"])
    write_labelled(tmp_path / "split" / "train", {"happy": [0]}, samples["x"])
    rc, lines, _ = cli("score", tmp_path / "split", "--split", "test", "--json")
    assert rc == 0 and json.loads(lines[0])["confusion"] == result["confusion"]
    rc, lines, _ = cli("score", tmp_path / "split")
    assert lines[0].startswith("9 images") and lines[1].startswith("accuracy ")


def test_score_names_each_source_and_their_mean(cli, tmp_path):
    samples = np.load(RELEASE / "samples.npz")
    write_labelled(tmp_path / "webcam", {"happy": [0, 1, 2], "sad": [4, 5]}, samples["x"])
    write_labelled(tmp_path / "b" / "stills", {"neutral": [6, 7], "happy": [3]}, samples["x"])
    alone = {}
    for name, folder in (("webcam", tmp_path / "webcam"), ("old", tmp_path / "b" / "stills")):
        rc, lines, _ = cli("score", folder, "--json")
        alone[name] = json.loads(lines[0])
    rc, lines, _ = cli("score", tmp_path / "webcam", f"old={tmp_path / 'b' / 'stills'}", "--json")
    both = json.loads(lines[0])
    assert rc == 0 and list(both["sources"]) == ["webcam", "old"]
    assert both["sources"] == alone  # each source scored on its own, as if alone
    assert both["mean_macro_f1"] == pytest.approx(np.mean([r["macro_f1"] for r in alone.values()]))
    rc, lines, _ = cli("score", tmp_path / "webcam", f"old={tmp_path / 'b' / 'stills'}")
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["webcam"], ["old"])}
    assert rows["webcam"][1:] == ["5", f"{alone['webcam']['accuracy']:.4f}", f"{alone['webcam']['macro_f1']:.4f}"]
    assert rows["old"][1] == "3" and lines[-1].startswith("mean macro-F1 over 2 sources")
    rc, _, err = cli("score", tmp_path / "webcam", f"webcam={tmp_path / 'b' / 'stills'}")
    assert rc == 1 and err == [f"error: webcam={tmp_path / 'b' / 'stills'}: a second source named "
                               "'webcam' (name them: NAME=DIR)"]


def test_score_errors_are_one_line(cli, tmp_path):
    rc, _, err = cli("score", tmp_path / "missing")
    assert rc == 1 and err == [f"error: {tmp_path / 'missing'}: no such folder"]
    (tmp_path / "dogs" / "dog").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "dogs" / "dog" / "a.png"), np.zeros((48, 48), np.uint8))
    rc, _, err = cli("score", tmp_path / "dogs")
    assert rc == 1 and len(err) == 1 and "no labelled images of the model's classes" in err[0]


@pytest.mark.proc
def test_help_explains_each_command_without_loading_tensorflow():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for args in ([], ["predict"], ["score"]):
        proc = subprocess.run([sys.executable, "-m", "ferpipe", *args, "--help"], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 0 and "example" in proc.stdout, proc.stderr
    code = "import sys, ferpipe.cli; ferpipe.cli.build_parser(); print('tensorflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def readme_commands(heading: str) -> list[str]:
    """The commands of the first bash block under `## heading` in the README, comments removed."""
    section = (ROOT / "README.md").read_text().split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    return [c.split("#")[0].strip() for c in block if c.strip() and not c.startswith("#")]


@pytest.mark.proc
@pytest.mark.slow
def test_readme_install_and_quick_start_from_a_clean_copy(tmp_path):
    """The README's install commands, in a copy of what git carries, then its first predict."""
    install, quick = readme_commands("Install"), readme_commands("Quick start")
    assert install[0].startswith("git clone") and install[-1] == "source .venv/bin/activate"
    assert quick[0] == "ferpipe predict photo.jpg"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    clone = tmp_path / "ferpipe"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    cv2.imwrite(str(clone / "photo.jpg"), astronaut())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    for command in install[1:-1]:
        proc = subprocess.run(command.split(), cwd=clone, capture_output=True, text=True, env=env,
                              timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    env["PATH"] = f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # what `source` does
    proc = subprocess.run(quick[0].split(), cwd=clone, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["emotion"] for r in rows] == ["happy"] and rows[0]["file"] == "photo.jpg"


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["keras", "pyfunc", "onnx"])
def test_model_from_the_registry(flavor, tmp_path, monkeypatch, cli, media):
    """`--model models:/fer-emotion@champion`: the serving pyfunc (Keras inside, as evaluate
    registers it, or the release's ONNX file); a plain Keras flavor carries no class names and
    is refused in one line (the classes never come from a params.yaml nearby); a name that is
    not registered is one line."""
    import keras
    import mlflow

    from ferpipe.inference import load_classifier
    from ferpipe.pipeline.registry import register_champion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    classes = json.loads((RELEASE / "model_card.json").read_text())["classes"]
    samples = np.load(RELEASE / "samples.npz")
    experiment = mlflow.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        if flavor == "keras":
            from ferpipe.pipeline.tracking import log_keras_model

            model = keras.models.load_model(RELEASE / "model.keras")
            info = log_keras_model(model, samples["x"][:2, ..., None].astype("float32"))
        else:
            from ferpipe.web.pyfunc import log_pyfunc

            model = RELEASE / ("model.onnx" if flavor == "onnx" else "model.keras")
            info = log_pyfunc(model, classes, example_face=samples["x"][0])
    register_champion(info.model_uri, "fer-emotion", "val_accuracy", 0.5, True, "test", "release")
    monkeypatch.chdir(ROOT)  # a params.yaml here is never read for class names
    if flavor == "keras":
        from ferpipe.errors import ModelError

        with pytest.raises(ModelError, match="no class names"):
            load_classifier("models:/fer-emotion@champion")
        return
    clf = load_classifier("models:/fer-emotion@champion")
    assert clf.classes == classes
    np.testing.assert_allclose(clf.predict_proba(samples["x"]), samples["probs"], atol=1e-4)
    rc, _, err = cli("predict", media / "photos" / "astronaut.jpg", "--model", "models:/fer-emotion@nobody")
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: models:/fer-emotion@nobody: cannot fetch")
