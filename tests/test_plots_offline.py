"""`dvc plots show` writes a page that draws its charts with no network: headless Chromium, every
request beyond file:// and localhost refused."""
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "plots" / "offline_template.html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def test_the_offline_template_is_current_and_links_nothing():
    sys.path.insert(0, str(TEMPLATE.parent))
    try:
        import make_template
    finally:
        sys.path.remove(str(TEMPLATE.parent))
    text = TEMPLATE.read_text(encoding="utf-8")
    assert text == make_template.template(), "run python docs/plots/make_template.py"
    assert "{plot_divs}" in text and "{scripts}" not in text  # no CDN tags from DVC
    assert not re.search(r"<script[^>]+src=", text)


@pytest.mark.proc
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_dvc_plots_draw_offline_in_a_real_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    out = tmp_path / "plots"
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "plots", "show", "-o", str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True, timeout=300)
    page_html = (out / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in page_html
    charts = re.findall(r"vegaEmbed\('#([^']+)'", page_html)
    assert charts, "no Vega plots on the page"

    blocked, errors = [], []

    def route(request_route):
        url = urlparse(request_route.request.url)
        if url.scheme in ("file", "data", "blob") or url.hostname in ("localhost", "127.0.0.1"):
            request_route.continue_()
        else:
            blocked.append(request_route.request.url)
            request_route.abort()

    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.route("**/*", route)
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto((out / "index.html").as_uri())
            for chart in charts:  # vega-embed renders to SVG or canvas inside the plot's div
                drawn = page.locator(f"#{chart} svg.marks, #{chart} canvas.marks").first
                drawn.wait_for(timeout=30_000)
                box = drawn.bounding_box()
                assert box and box["width"] > 50 and box["height"] > 50, (chart, box)
            marks = page.locator(f"#{charts[0]} .marks path, #{charts[0]} .marks").count()
            assert marks > 0
        finally:
            browser.close()
    assert blocked == [], blocked
    assert errors == [], errors
