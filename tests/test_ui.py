"""The MLflow UI as users see it: headless Chromium on the tiny project's tracking DB."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_ui(tiny_project: Path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{tiny_project / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tiny_project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow ui exited"
                assert time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # stop the server and its workers by process id
        server.wait(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_runs_page_and_compare_view_in_a_real_browser(tiny_project, mlflow_ui):
    from playwright.sync_api import sync_playwright

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("fer-pipeline")
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="tags.stage = 'train_baselines'")
    runs = runs.drop_duplicates("tags.model_name")  # one run of each baseline: cnn_a and cnn_b
    first, second = runs.run_id.iloc[0], runs.run_id.iloc[1]
    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs")
        for name in ("prepare", "augment", "tune", "evaluate", "release", "cnn_a", "cnn_b"):
            page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)

        page.goto(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs/{first}")
        page.get_by_text("final_val_accuracy").first.wait_for(timeout=60_000)
        value = float(runs.loc[runs.run_id == first, "metrics.final_val_accuracy"].iloc[0])
        text = page.inner_text("body")
        assert f"final_val_accuracy\n{value!r}" in text  # the UI prints full precision

        ids = json.dumps([first, second]).replace(" ", "")
        page.goto(f"{mlflow_ui}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment.experiment_id])}")
        page.get_by_text("model.batch_norm").first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        for run_id in (first, second):  # the differing params of both runs are on the page
            row = runs[runs.run_id == run_id].iloc[0]
            assert row["params.model_name"] in text and row["params.model.head"] in text
        page.screenshot(path=str(tiny_project / "mlflow_compare.png"), full_page=True)
        browser.close()
