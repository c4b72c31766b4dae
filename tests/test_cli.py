"""The CLI's edges: annotated copies never overwrite anything, per-file failures are one line
while the other files run, and `score` streams in batches."""
import json

import cv2
import numpy as np
import pytest

from test_predict import astronaut, classifier, cli  # noqa: F401 (fixtures)


def test_annotate_refuses_the_input_folder_and_keeps_same_named_inputs_apart(cli, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "face.jpg"), astronaut())
    original = (tmp_path / "a" / "face.jpg").read_bytes()
    rc, lines, err = cli("predict", tmp_path / "a", "--annotate", tmp_path / "a")
    assert rc == 1 and lines == [] and len(err) == 1 and "inside the input folder" in err[0]
    rc, lines, err = cli("predict", tmp_path / "a", "--annotate", tmp_path / "a" / "out")
    assert rc == 1 and "inside the input folder" in err[0]
    assert (tmp_path / "a" / "face.jpg").read_bytes() == original
    out = tmp_path / "out"
    rc, lines, err = cli("predict", tmp_path / "a" / "face.jpg", tmp_path / "b" / "face.jpg",
                         "--annotate", out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["face-1.jpg", "face.jpg"]
    assert (tmp_path / "a" / "face.jpg").read_bytes() == original


def test_annotate_never_writes_over_the_input_file(cli, tmp_path):
    cv2.imwrite(str(tmp_path / "face.png"), astronaut())
    original = (tmp_path / "face.png").read_bytes()
    rc, _, err = cli("predict", tmp_path / "face.png", "--annotate", tmp_path)
    assert rc == 0, err
    assert (tmp_path / "face.png").read_bytes() == original
    assert (tmp_path / "face-1.png").is_file()


def test_each_bad_file_is_one_line_and_the_others_still_run(cli, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "good.jpg"), astronaut())
    from PIL import Image

    Image.new("1", (11000, 10000)).save(tmp_path / "huge.png")  # 110 megapixels in a small file
    (tmp_path / "cut.jpg").write_bytes(cv2.imencode(".jpg", astronaut())[1].tobytes()[:300])
    rc, lines, err = cli("predict", tmp_path)
    assert rc == 1
    assert err == [f"error: {tmp_path / 'cut.jpg'}: damaged JPEG image",
                   f"error: {tmp_path / 'empty.jpg'}: empty file (0 bytes)",
                   f"error: {tmp_path / 'huge.png'}: image is 11000x10000 pixels, over the limit of "
                   "100 megapixels"]
    assert [json.loads(line)["emotion"] for line in lines] == ["happy"]


def test_a_small_crop_without_a_detected_face_hints_at_no_detect(cli, tmp_path):
    cv2.imwrite(str(tmp_path / "crop.png"), np.full((40, 90), 128, np.uint8))  # not near-square
    rc, lines, _ = cli("predict", tmp_path / "crop.png")
    row = json.loads(lines[0])
    assert rc == 0 and row["faces"] == 0 and "--no-detect" in row["hint"]


def test_score_sends_faces_in_batches(cli, tmp_path, monkeypatch, classifier):
    import ferpipe.cli.score as score

    samples = np.load(score.Path(__file__).resolve().parents[1] / "models/release/samples.npz")
    for i, face in enumerate(samples["x"]):
        (tmp_path / "happy").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "happy" / f"{i}.png"), face)
    sizes = []
    real = classifier.predict_proba
    monkeypatch.setattr(score, "BATCH", 3)
    monkeypatch.setattr(classifier, "predict_proba", lambda faces: sizes.append(len(faces)) or real(faces))
    rc, lines, _ = cli("score", tmp_path, "--json")
    assert rc == 0 and json.loads(lines[0])["images"] == len(samples["x"])
    assert max(sizes) == 3 and sum(sizes) == len(samples["x"])


@pytest.mark.parametrize("argv", [["predict", "x.jpg", "--every", "0"], ["predict", "x.jpg", "--min-face", "0"]])
def test_bad_flags_are_one_line(cli, argv):
    rc, _, err = cli(*argv)
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: --")
