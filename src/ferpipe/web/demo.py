"""The demo page (`ferpipe demo`): upload a photo, see each face boxed, labelled and scored.

FastAPI, because MLflow already brings it (with uvicorn) into the lock: no new dependency, where
Gradio would add about 50 packages for one page. The page is plain HTML (a form and the answer
rendered by the server), so it needs no JavaScript and no files from the network.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time,
# and UploadFile is imported inside create_app.
import base64
import html
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


def _page(body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ferpipe demo</title>"
            f"<style>{STYLE}</style></head><body><h1>Facial emotion demo</h1>"
            "<form action='/' method='post' enctype='multipart/form-data'>"
            "<input type='file' name='photo' accept='image/*' required> "
            "<button type='submit'>Analyze</button></form>"
            f"{body}</body></html>")


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
    """The annotated photo and, per face, its label and one probability bar per class."""
    from ferpipe.draw import COLOURS

    parts = []
    for n, face in enumerate(faces, 1):
        colour = "#{:02x}{:02x}{:02x}".format(*COLOURS[(n - 1) % len(COLOURS)])
        rows = "".join(
            f"<div class='row'><span>{html.escape(c)}</span><div class='bar'><span style='width:"
            f"{100 * face.probabilities[c]:.1f}%;background:{colour}'></span></div>"
            f"<span>{100 * face.probabilities[c]:.0f}%</span></div>" for c in classes)
        parts.append(f"<div class='face'><h3>Face {n}: <span class='emotion'>"
                     f"{html.escape(face.emotion)}</span></h3>{rows}</div>")
    summary = (f"<p>{len(faces)} face{'s' if len(faces) != 1 else ''} in {html.escape(name)}</p>"
               if faces else f"<p class='noface'>No face found in {html.escape(name)}.</p>")
    alt = html.escape(f"{name} with the faces found")
    return (f"{summary}<div class='result'><img alt='{alt}' src='{_jpeg_data_url(annotate(image, faces))}'>"
            f"<div>{''.join(parts)}</div></div>")


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
        return _page("<p>Upload a photo: every face found is boxed and classified "
                     f"({html.escape(', '.join(classes))}). Nothing leaves this machine.</p>")

    @app.post("/", response_class=HTMLResponse)
    async def page(photo: UploadFile = File(...)) -> HTMLResponse:
        image, error = await read(photo)
        if image is None:
            return HTMLResponse(_page(f"<p class='error'>{html.escape(error)}</p>"), status_code=400)
        body = result_html(photo.filename or "upload", image, recognizer.analyze(image), classes)
        return HTMLResponse(_page(body))

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
