"""The champion as an MLflow pyfunc: in-process, and behind `mlflow models serve` on 127.0.0.1.

The release model is logged with `ferpipe.web.pyfunc.log_pyfunc` into a fresh SQLite tracking DB and
registered as `fer-emotion@champion` the way the evaluate stage does it."""
import base64
import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from servers import free_port, served

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "models/release"


def jpeg_b64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """(tracking URI, classes, sample faces, their release-model probabilities)."""
    import mlflow

    from ferpipe.pipeline.registry import register_champion
    from ferpipe.web.pyfunc import log_pyfunc

    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    classes = json.loads((RELEASE / "model_card.json").read_text())["classes"]
    samples = np.load(RELEASE / "samples.npz")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("serve-test", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            info = log_pyfunc(RELEASE / "model.keras", classes, example_face=samples["x"][0])
        register_champion(info.model_uri, "fer-emotion", "val_accuracy", 0.5, True, "test", "release")
    finally:
        mlflow.set_tracking_uri(previous)
    return uri, classes, samples["x"], samples["probs"]


def test_pyfunc_answers_faces_and_photos_in_process(champion):
    import mlflow
    import pandas as pd
    from skimage import data

    uri, classes, faces, probs = champion
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/fer-emotion@champion")
    assert model.metadata.signature is not None
    assert {c.name for c in model.metadata.signature.inputs} == {"face", "image"}

    out = model.predict(pd.DataFrame({"face": [f.tolist() for f in faces[:3]]}))
    assert len(out) == 3
    for row, expected in zip(out, probs[:3]):
        (face,) = row["faces"]
        assert face["box"] == [0, 0, 48, 48]
        np.testing.assert_allclose([face["probabilities"][c] for c in classes], expected, atol=1e-4)
        assert face["emotion"] == classes[int(np.argmax(expected))]

    photos = [base64.b64decode(jpeg_b64(data.astronaut())), base64.b64decode(jpeg_b64(data.coffee()))]
    astronaut, coffee = model.predict(pd.DataFrame({"image": photos}))
    assert coffee["faces"] == []
    assert len(astronaut["faces"]) >= 1
    x, y, w, h = astronaut["faces"][0]["box"]
    assert 0 <= x < x + w <= 512 and 0 <= y < y + h <= 512 and w >= 48
    assert astronaut["faces"][0]["emotion"] in classes


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory):
    """`mlflow models serve -m models:/fer-emotion@champion --env-manager local` on a free port."""
    uri = champion[0]
    cwd = tmp_path_factory.mktemp("server")
    port = free_port()
    # MLflow execs `uvicorn` by name: the venv's bin must be on PATH (`uv run` puts it there).
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    url = f"http://127.0.0.1:{port}"
    with served([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/fer-emotion@champion",
                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                cwd, f"{url}/ping", env, "mlflow models serve"):
        yield url


def post(url: str, body: bytes | str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=body if isinstance(body, bytes) else body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.proc
def test_served_champion_answers_faces_and_photos(server, champion):
    from skimage import data

    _, classes, faces, probs = champion
    status, body = post(server, json.dumps({"dataframe_records": [{"face": f.tolist()} for f in faces[:2]]}))
    assert status == 200, body
    got = [[row["faces"][0]["probabilities"][c] for c in classes] for row in body["predictions"]]
    np.testing.assert_allclose(got, probs[:2], atol=1e-4)

    status, body = post(server, json.dumps({"dataframe_records": [{"image": jpeg_b64(data.astronaut())},
                                                                  {"image": jpeg_b64(data.coffee())}]}))
    assert status == 200, body
    astronaut, coffee = body["predictions"]
    assert astronaut["faces"] and astronaut["faces"][0]["emotion"] in classes
    assert len(astronaut["faces"][0]["box"]) == 4 and coffee["faces"] == []


@pytest.mark.parametrize("payload, reason", [
    ('{"dataframe_records": [{"face": [[1, 2', "valid JSON"),
    (json.dumps({"dataframe_records": [{"face": [[0] * 10] * 10}]}), "expected [48, 48]"),
    (json.dumps({"dataframe_records": [{"face": [[999] * 48] * 48}]}), "0..255"),
    (json.dumps({"dataframe_records": [{"face": [["a"] * 48] * 48}]}), "face"),
    (json.dumps({"dataframe_records": [{"image": base64.b64encode(b"not an image").decode()}]}),
     "does not decode as an image"),
    (json.dumps({"dataframe_records": []}), "empty batch"),
    (json.dumps({"dataframe_records": [{"pixels": [1, 2, 3]}]}), "no 'face' or 'image' column"),
    # plain `mlflow models serve` words this one itself (`ferpipe serve` says what to send instead)
    (json.dumps({"dataframe_records": [{"face": [[1, 2], [3, 4]]}, {"image": "aGVsbG8="}]}), "model signature"),
])
@pytest.mark.proc
def test_bad_payloads_get_400_with_the_reason(server, payload, reason):
    status, body = post(server, payload)
    assert status == 400, body
    assert reason in body["message"]


@pytest.fixture(scope="module")
def ferpipe_serve(tmp_path_factory):
    """`ferpipe serve` on the release, from a folder with no MLflow database (a fresh clone)."""
    cwd = tmp_path_factory.mktemp("ferpipe-serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    url = f"http://127.0.0.1:{port}"
    with served([sys.executable, "-m", "ferpipe", "serve", "--port", str(port),
                 "--max-request-mb", "2", "--max-megapixels", "1", "--max-rows", "8"],
                cwd, f"{url}/ping", env, "ferpipe serve") as proc:
        yield url, cwd, proc.pid


@pytest.mark.proc
def test_ferpipe_serve_answers_photos_without_a_registry(ferpipe_serve):
    from skimage import data

    url, cwd, _ = ferpipe_serve
    status, body = post(url, json.dumps({"dataframe_records": [{"image": jpeg_b64(data.astronaut())}]}))
    assert status == 200, body
    (face,) = body["predictions"][0]["faces"]
    assert face["emotion"] == "happy" and face["found"] == "detected"
    assert not (cwd / "mlflow.db").exists()  # nothing left behind


@pytest.mark.proc
def test_ferpipe_serve_limits_are_413_and_400_with_reasons(ferpipe_serve):
    from skimage import data

    url, _, _ = ferpipe_serve
    big = json.dumps({"dataframe_records": [{"image": "A" * 3_000_000}]})
    status, body = post(url, big)
    assert status == 413 and "over 2 MB" in body["message"]
    wide = np.tile(data.astronaut(), (2, 2, 1))  # 1024x1024: over 1 megapixel
    status, body = post(url, json.dumps({"dataframe_records": [{"image": jpeg_b64(wide)}]}))
    assert status == 400 and "over the limit of 1 megapixels" in body["message"], body
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n broken header").decode()
    status, body = post(url, json.dumps({"dataframe_records": [{"image": broken}]}))
    assert status == 400 and "damaged PNG image" in body["message"], body


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.proc
def test_four_clients_with_good_and_bad_requests_get_the_expected_codes_and_memory_holds(ferpipe_serve):
    """240 requests from 4 parallel clients on loopback, a mix of photos, faces and bad bodies:
    every answer is the expected code, and the server's memory after is within 100 MB of where
    it stood after a warm-up round of the same mix."""
    from concurrent.futures import ThreadPoolExecutor

    from skimage import data

    url, _, pid = ferpipe_serve
    photo = jpeg_b64(data.astronaut())
    face = np.full((48, 48), 128).tolist()
    mix = [(json.dumps({"dataframe_records": [{"image": photo}]}), 200),
           (json.dumps({"dataframe_records": [{"face": face}, {"face": face}]}), 200),
           ("{not json", 400),
           (json.dumps({"dataframe_records": [{"image": photo}, {"face": face}]}), 400),  # mixed kinds
           (json.dumps({"dataframe_records": [{"image": "bm90IGFuIGltYWdl"}]}), 400),
           (json.dumps({"dataframe_records": [{"face": face}] * 9}), 429),  # --max-rows 8
           ("[" * 50_000 + "]" * 50_000, 400),
           (json.dumps({"dataframe_records": [{"image": "A" * 2_500_000}]}), 413)]

    def round_of(count: int) -> list[tuple[int, int]]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda i: (post(url, mix[i % len(mix)][0])[0], mix[i % len(mix)][1]),
                                 range(count)))

    round_of(len(mix) * 4)
    before = rss_mb(pid)
    answers = round_of(240)
    assert [got for got, want in answers if got != want] == []
    assert rss_mb(pid) - before < 100
    status, body = post(url, mix[3][0])
    assert status == 400 and "two requests" in body["message"] and len(body["message"]) < 400
