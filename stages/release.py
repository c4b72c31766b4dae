"""Stage `release`: export the evaluate stage's champion to models/release/ with a model card."""
import json
from pathlib import Path

from ferpipe.pipeline.config import load_section, run_main
from ferpipe.pipeline.params import PrepareParams, ReleaseConfig

EVALUATION = Path("metrics/evaluate.json")
TIMING = Path("reports/timing/evaluate.json")
OUT_DIR = Path("models/release")


def main() -> None:
    cfg = load_section("release", ReleaseConfig)
    # Imported only now: TensorFlow takes ~10 s to load, and a params mistake is reported at once.
    import mlflow
    import numpy as np

    from ferpipe.files import load_split
    from ferpipe.pipeline.lineage import data_version, git_state
    from ferpipe.pipeline.release import champion_params, export, model_card, write_card
    from ferpipe.pipeline.tracking import stage_run

    evaluation = json.loads(EVALUATION.read_text())
    name, model_name = evaluation["champion"], evaluation["champion_model"]
    latency_ms = json.loads(TIMING.read_text())["latency_ms_single_image"][name]
    # Sample faces from the last source (the photos: what users bring), the card's example too.
    sources = sorted(p.parent for p in Path("data/prepared").glob("*/test.npz"))
    x_test, y_test, classes = load_split(sources[-1], "test")
    every_test_face = np.concatenate([load_split(s, "test")[0] for s in sources])
    with stage_run("release", cfg.model_dump(), "data/prepared", tags={"model_name": name}):
        exported = export(Path("models/trained") / model_name / "model.keras", OUT_DIR, x_test,
                          y_test, cfg, classes, every_test_face, tta=evaluation["champion_tta"])
        commit, dirty = git_state()
        sources = load_section("prepare", PrepareParams).sources
        data = {spec.source: data_version(spec.source) for spec in sources.values()}
        data["data/prepared"] = data_version("data/prepared")
        markdown, card = model_card(name, classes, evaluation, exported, data,
                                    champion_params(model_name), commit, dirty, latency_ms)
        write_card(OUT_DIR, markdown, card)
        mlflow.log_metrics({"release_megabytes": exported["megabytes"],
                            **{k: exported[k] for k in ("onnx_max_abs_diff", "onnx_changed_predictions")}})
        mlflow.log_artifacts(str(OUT_DIR), "release")
    print(f"release: {name} -> {exported['file']} ({exported['megabytes']} MB)")


if __name__ == "__main__":
    run_main(main)
