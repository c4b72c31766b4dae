"""Third hardening round: the pixel limit for every format, bounded work per request, 4xx
instead of 500, what the API refuses, and the CLI's rough edges."""
import io
import json
import re
import subprocess
import sys

import anyio
import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from test_predict import astronaut


def encoded(fmt: str, size: tuple[int, int], **kw) -> bytes:
    out = io.BytesIO()
    Image.new("L", size).save(out, fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize("fmt,kw", [("WEBP", {}), ("TIFF", {"compression": "tiff_deflate"}),
                                    ("PNG", {}), ("GIF", {})])
def test_the_pixel_limit_holds_for_every_format_before_decoding(fmt, kw):
    from ferpipe.errors import ImageError
    from ferpipe.imageio import load_image

    data = encoded(fmt, (6000, 5000), **kw)  # 30 MP in a small body
    with pytest.raises(ImageError, match=r"6000x5000 pixels, over the limit of 25 megapixels"):
        load_image(data, max_pixels=25_000_000)


def test_a_jpeg_whose_size_cannot_be_read_is_refused_not_decoded():
    from ferpipe.errors import ImageError
    from ferpipe.imageio import load_image

    ok, jpeg = cv2.imencode(".jpg", astronaut())  # 512x512
    data = jpeg.tobytes()
    at = data.index(b"\xff\xdb")  # the first quantization table, after APP0
    broken = data[:at] + b"\x00" + data[at:]  # one stray byte before a marker
    with pytest.raises(ImageError, match="over the limit of 0.1 megapixels|damaged JPEG"):
        load_image(broken, max_pixels=100_000)


@pytest.fixture(scope="module")
def pyfunc():
    pytest.importorskip("mlflow")
    from mlflow.pyfunc import PythonModelContext

    from ferpipe.inference import release_path
    from ferpipe.web.pyfunc import FerEmotionModel

    model = FerEmotionModel()
    model.load_context(PythonModelContext(artifacts={"onnx_model": str(release_path())}, model_config={
        "max_rows": 3, "max_request_pixels": 1_000_000, "max_seconds": 60.0}))
    return model


def status_and_message(model, rows):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        model.predict(None, pd.DataFrame(rows))
    except MlflowException as err:
        return err.get_http_status_code(), err.message
    return 200, ""


def test_rows_and_total_pixels_per_request_are_bounded(pyfunc):
    small = cv2.imencode(".png", cv2.resize(astronaut(), (400, 400)))[1].tobytes()
    assert status_and_message(pyfunc, {"image": [small] * 3})[0] == 200
    code, message = status_and_message(pyfunc, {"image": [small] * 4})
    assert code == 429 and "--max-rows" in message
    big = encoded("PNG", (900, 900))
    code, message = status_and_message(pyfunc, {"image": [big, big]})
    assert code == 429 and "--max-request-megapixels" in message


def test_work_stops_when_the_request_time_is_up(pyfunc):
    photo = cv2.imencode(".png", cv2.resize(astronaut(), (300, 300)))[1].tobytes()
    pyfunc.max_seconds = 0.0
    try:
        code, message = status_and_message(pyfunc, {"image": [photo] * 2})
    finally:
        pyfunc.max_seconds = 60.0
    assert code == 504 and "--max-request-seconds" in message


def test_an_error_never_echoes_a_long_input(pyfunc):
    code, message = status_and_message(pyfunc, {"image": ["x" * 50_000]})
    assert code == 400 and len(message) < 400


def run_guarded(app, body_chunks, max_bytes=1000):
    from ferpipe.web.guard import limit_body

    sent, chunks = [], list(body_chunks)

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/invocations", "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}
    anyio.run(limit_body(app, max_bytes, "ferpipe serve --max-request-mb"), scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def read_all(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def test_a_chunked_body_over_the_limit_is_413_even_inside_a_task_group():
    async def app(scope, receive, send):  # reads the body in a task group, as MLflow's server does
        async with anyio.create_task_group() as group:
            group.start_soon(read_all, receive)

    code, body = run_guarded(app, [b"x" * 600] * 3)
    assert code == 413 and b"--max-request-mb" in body


def test_json_nested_too_deep_is_400_before_the_parser_sees_it():
    parsed = []

    async def app(scope, receive, send):
        parsed.append(json.loads(await read_all(receive)))  # would raise RecursionError

    code, body = run_guarded(app, [b"[" * 5000, b"]" * 5000], max_bytes=100_000)
    assert code == 400 and b"nested deeper than 64" in body and parsed == []
    code, _ = run_guarded(_answer_ok, [b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}'])
    assert code == 200  # brackets inside a string are not nesting


async def _answer_ok(scope, receive, send):
    await read_all(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_an_error_answer_keeps_its_reason_and_drops_the_quoted_input():
    table = "x" * 50_000

    async def app(scope, receive, send):  # as MLflow's scoring server words a failed predict
        await read_all(receive)
        body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                           "message": f"Failed to predict data '{table}'. \nError: row 0: bad face"}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    code, body = run_guarded(app, [b"{}"])
    assert code == 400 and json.loads(body)["message"] == "row 0: bad face"


@pytest.mark.parametrize("picture,kw,reason", [
    (np.zeros((1, 1, 3), np.uint8), {}, "too small to hold a face"),
    (np.zeros((0, 0), np.uint8), {}, "empty array"),
    (np.full((64, 64), np.nan), {}, "NaN or infinite"),
    (np.zeros((64, 64, 3), np.uint8), {"channels": "XYZ"}, "channels='XYZ'"),
])
def test_the_api_refuses_what_is_not_a_face_photo(picture, kw, reason):
    from ferpipe import EmotionRecognizer, ImageError

    with pytest.raises(ImageError, match=re.escape(reason)):
        EmotionRecognizer().analyze(picture, **kw)


def test_a_flat_picture_is_no_face_and_channel_names_take_any_case():
    from ferpipe import EmotionRecognizer

    recognizer = EmotionRecognizer()
    assert recognizer.analyze(np.zeros((2000, 2000), np.uint8)) == []
    rgb = astronaut()[..., ::-1]
    assert recognizer.analyze(rgb, channels="rgb") == recognizer.analyze(rgb, channels="RGB")


@pytest.mark.proc
def test_predict_into_a_closed_pipe_stops_quietly(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), astronaut())
    proc = subprocess.run(f"'{sys.executable}' -m ferpipe predict '{tmp_path}' | head -1", shell=True,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert len(proc.stdout.splitlines()) == 1 and proc.stderr == ""


def test_version_and_a_missing_extra_are_one_line(monkeypatch, capsys):
    from ferpipe import __version__
    from ferpipe.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"ferpipe {__version__}"
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve"]) == 1 and "pip install 'ferpipe[serve]'" in capsys.readouterr().err
    assert main(["demo"]) == 1 and "pip install 'ferpipe[demo]'" in capsys.readouterr().err


@pytest.mark.proc
def test_the_readme_curl_body_is_built_without_the_argument_limit(tmp_path):
    """The README's request, with `cat` in curl's place: a 300 KB photo makes valid JSON."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^(\{ printf .*?)\\\n\s*\| curl", readme, re.M).group(1)
    photo = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "photo.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert (tmp_path / "photo.jpg").stat().st_size > 200_000
    proc = subprocess.run(["bash", "-c", command + " | cat"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    body = json.loads(proc.stdout)
    assert body["dataframe_records"][0]["image"][:4] == "/9j/"  # a JPEG, base64


def test_the_demo_refuses_an_upload_over_the_limit_before_spooling_it(monkeypatch, tmp_path):
    """A 30 MB upload streamed in 1 MB chunks (no Content-Length): 413, nothing in /tmp."""
    import tempfile

    from ferpipe import EmotionRecognizer
    from ferpipe.web.demo import create_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the form parser would spool it
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    chunks = [head] + [b"\xff" * 2**20] * 30
    sent = []

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
    anyio.run(create_app(EmotionRecognizer()), scope, receive, send)
    assert sent[0]["status"] == 413 and b"20 MB" in sent[1]["body"]
    assert list(tmp_path.iterdir()) == [] and len(chunks) > 0  # it stopped reading at the limit


@pytest.mark.proc
def test_an_annotated_video_and_a_damaged_photo_print_nothing_from_opencv(tmp_path):
    """OpenCV writes some warnings with its own fprintf (WebM's "tag ... is not supported");
    VP9 goes into MP4, which has the tag, so nothing reaches the user's stderr."""
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for _ in range(5):
        writer.write(cv2.resize(astronaut(), (320, 240)))
    writer.release()
    proc = subprocess.run([sys.executable, "-m", "ferpipe", "predict", "clip.avi", "--annotate", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "out" / "clip.mp4").stat().st_size > 0
