"""`ferpipe demo`: the page's pieces, the app over HTTP, and a real browser uploading a photo."""
import re
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from servers import CHROMIUM, CHROMIUM_FLAGS, free_port, served, wait_for

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "models/release/model.keras"
CLASSES = ["happy", "neutral", "sad", "surprise"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg", quality=90)
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg", quality=90)
    (folder / "notes.txt").write_text("not a photo")
    return {p.stem: p for p in folder.iterdir()}


def test_result_shows_a_label_and_a_bar_per_class_for_each_face():
    from ferpipe import Face
    from ferpipe.web.demo import annotate, result_html

    image = np.full((200, 300, 3), 90, np.uint8)
    faces = [Face((20, 30, 80, 80), "happy", {"happy": 0.7, "neutral": 0.2, "sad": 0.05, "surprise": 0.05}),
             Face((150, 40, 60, 60), "sad", {"happy": 0.1, "neutral": 0.1, "sad": 0.75, "surprise": 0.05})]
    page = result_html("<me>.jpg", image, faces, CLASSES)
    assert "2 faces in &lt;me&gt;.jpg" in page  # names are escaped
    assert page.count("class='emotion'>happy<") == 1 and page.count("class='emotion'>sad<") == 1
    assert page.count("class='bar'") == 8 and "width:75.0%" in page and "data:image/jpeg;base64," in page
    drawn = annotate(image, faces)
    assert drawn.shape == image.shape and (drawn[30, 20:100] != 90).any()  # the box's top edge
    assert (image == 90).all()  # the upload itself is left alone
    assert "No face found in x.jpg" in result_html("x.jpg", image, [], CLASSES)


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, path: Path) -> tuple[int, str]:
    body, content_type = multipart(path)
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def app_url():
    """The demo app in this process (uvicorn in a thread), on 127.0.0.1."""
    import uvicorn

    from ferpipe import EmotionRecognizer
    from ferpipe.web.demo import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(EmotionRecognizer(str(RELEASE))), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(url, thread.is_alive)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def test_app_answers_a_photo_with_labels_and_refuses_a_non_image(app_url, photos):
    import json

    with urllib.request.urlopen(app_url) as response:
        assert "type='file'" in response.read().decode()
    status, page = post(app_url + "/", photos["astronaut"])
    assert status == 200 and re.search(r"[1-9]\d* faces? in astronaut.jpg", page)
    assert any(f"class='emotion'>{c}<" in page for c in CLASSES)
    status, page = post(app_url + "/", photos["coffee"])
    assert status == 200 and "No face found in coffee.jpg" in page
    status, page = post(app_url + "/", photos["notes"])
    assert status == 400 and "notes.txt: not an image" in page
    status, answer = post(app_url + "/api/analyze", photos["astronaut"])
    face = json.loads(answer)["faces"][0]
    assert status == 200 and face["emotion"] in CLASSES and len(face["box"]) == 4


@pytest.mark.proc
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_upload_a_photo_in_a_real_browser(photos, tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with served([sys.executable, "-m", "ferpipe", "demo", "--port", str(port)], ROOT, url,
                what="ferpipe demo"):
        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.set_input_files("input[name=photo]", str(photos["astronaut"]))
            page.click("button[type=submit]")
            label = page.locator(".emotion").first
            label.wait_for(timeout=120_000)
            assert label.inner_text() in CLASSES
            assert page.locator(".face .bar").count() == len(CLASSES)
            assert page.locator("img").first.evaluate("img => img.naturalWidth") > 0  # it decoded
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            browser.close()
