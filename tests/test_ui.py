"""The MLflow UI as users see it: headless Chromium on the tiny project's tracking DB."""
import json
import sys
from pathlib import Path

import mlflow
import pytest

from servers import CHROMIUM, CHROMIUM_FLAGS, free_port, served

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_ui(tiny_project: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with served([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                 f"sqlite:///{tiny_project / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                tiny_project, f"{url}/health", what="mlflow ui", limit_s=120):
        yield url


@pytest.mark.proc
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_runs_page_and_compare_view_in_a_real_browser(tiny_project, mlflow_ui):
    from playwright.sync_api import sync_playwright

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("fer-pipeline")
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="tags.stage = 'train_baselines'")
    runs = runs.drop_duplicates("tags.model_name")  # one run of each baseline: cnn_a and cnn_b
    first, second = runs.run_id.iloc[0], runs.run_id.iloc[1]
    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
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
