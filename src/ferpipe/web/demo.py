"""The demo page (`ferpipe demo`): upload a photo, see each face boxed, labelled and scored.

FastAPI, because MLflow already brings it (with uvicorn) into the lock: no new dependency, where
Gradio would add about 50 packages for one page. The page is plain HTML (a form and the answer
rendered by the server), so it needs no JavaScript and no files from the network.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time,
# and UploadFile is imported inside create_app.
import base64
import functools
from typing import Any

import numpy as np

from ferpipe.errors import FerpipeError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # the multipart envelope around the file
DISPLAY_MAX_SIDE = 1024

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
form { margin: 1em 0; padding: 1em; background: #f4f4f4; border-radius: 6px; }
.result { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
.result img { max-width: 640px; width: 100%; border: 1px solid #ccc; }
.face { margin-bottom: 1.2em; min-width: 280px; }
.face h3 { margin: 0 0 .4em 0; }
.row { display: grid; grid-template-columns: 6em 1fr 3.5em; gap: .5em; align-items: center; font-size: .9em; }
.bar { background: #e6e6e6; height: .9em; border-radius: 3px; }
.bar span { display: block; height: 100%; border-radius: 3px; }
.error { color: #b00020; font-weight: bold; }
"""


# One template, autoescaped: file names and class names reach the page as text, never markup.
PAGE = """<!doctype html><html><head><meta charset='utf-8'><title>ferpipe demo</title>
<style>{{ style }}</style></head><body><h1>Facial emotion demo</h1>
<form action='/' method='post' enctype='multipart/form-data'>
<input type='file' name='photo' accept='image/*' required> <button type='submit'>Analyze</button></form>
{% if error %}<p class='error'>{{ error }}</p>
{% elif name is none %}<p>Upload a photo: every face found is boxed and classified ({{ classes | join(', ') }}).
Nothing leaves this machine.</p>
{% elif faces %}<p>{{ faces | length }} face{{ 's' if faces | length != 1 }} in {{ name }}</p>
{% else %}<p class='noface'>No face found in {{ name }}.</p>{% endif %}
{% if image %}<div class='result'><img alt='{{ name }} with the faces found' src='{{ image }}'><div>
{% for face in faces %}{% set colour = colours[loop.index0 % colours | length] %}
<div class='face'><h3>Face {{ loop.index }}: <span class='emotion'>{{ face.emotion }}</span></h3>
{% for c in classes %}<div class='row'><span>{{ c }}</span><div class='bar'><span style='width:{{ '%.1f' % (100 * face.probabilities[c]) }}%;background:{{ colour }}'></span></div><span>{{ '%.0f' % (100 * face.probabilities[c]) }}%</span></div>
{% endfor %}</div>{% endfor %}</div></div>{% endif %}
</body></html>"""


@functools.cache
def _template() -> Any:
    """PAGE compiled once (a new Environment per request would parse it on every page)."""
    import jinja2

    return jinja2.Environment(autoescape=True).from_string(PAGE)


def render(**values: Any) -> str:
    """The page: the form, then the welcome, an error, or the result (`name`, `image`, `faces`)."""
    from ferpipe.draw import COLOURS

    return _template().render(style=STYLE, colours=["#{:02x}{:02x}{:02x}".format(*c) for c in COLOURS],
                              **{"error": "", "name": None, "image": "", "faces": [], "classes": [],
                                 **values})


def annotate(image: np.ndarray, faces: list[Any]) -> np.ndarray:
    """A BGR copy of `image` with each face (a `Face`) boxed, numbered and labelled."""
    from ferpipe.draw import draw_faces
    from ferpipe.imageio import load_image

    return draw_faces(load_image(image), faces, numbered=True)


def _jpeg_data_url(image: np.ndarray) -> str:
    import cv2

    scale = min(1.0, DISPLAY_MAX_SIDE / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


def result_html(name: str, image: np.ndarray, faces: list[Any], classes: list[str]) -> str:
    """The page with the annotated photo and, per face, its label and a probability bar per class."""
    return render(name=name, image=_jpeg_data_url(annotate(image, faces)), faces=faces, classes=classes)


def create_app(recognizer: Any) -> Any:
    """The FastAPI app over an EmotionRecognizer: GET / is the form; POST / answers with the
    page, POST /api/analyze with JSON ({"faces": [{"box", "emotion", "probabilities", "found"}]})."""
    from fastapi import FastAPI, File, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="ferpipe demo")
    classes = recognizer.classes

    async def read(photo: UploadFile) -> tuple[np.ndarray | None, str]:
        data = await photo.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return None, f"{photo.filename}: over {MAX_UPLOAD_BYTES // 2**20} MB"
        try:
            return recognizer.read(data), ""
        except FerpipeError as err:
            return None, f"{photo.filename}: {str(err).split(': ', 1)[-1]}"


    @app.get("/", response_class=HTMLResponse)
    def form() -> str:
        return render(classes=classes)

    @app.post("/", response_class=HTMLResponse)
    async def page(photo: UploadFile = File(...)) -> HTMLResponse:
        image, error = await read(photo)
        if image is None:
            return HTMLResponse(render(error=error, classes=classes), status_code=400)
        return HTMLResponse(result_html(photo.filename or "upload", image, recognizer.analyze(image), classes))

    @app.post("/api/analyze")
    async def api(photo: UploadFile = File(...)) -> JSONResponse:
        image, error = await read(photo)
        if image is None:
            return JSONResponse({"error": error}, status_code=400)
        return JSONResponse({"faces": [face.to_dict() for face in recognizer.analyze(image)]})

    # Before the form parser: it spools an upload to /tmp whole, so a 1 GB body would be
    # written out before the endpoint could refuse it; the guard stops reading at the limit.
    from ferpipe.web.guard import limit_body

    return limit_body(app, MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES,
                      f"the demo takes photos up to {MAX_UPLOAD_BYTES // 2**20} MB")
