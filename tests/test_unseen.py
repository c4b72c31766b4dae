"""The generalization number: each source scored by a model that never trained on it."""
from ferpipe.pipeline.evaluate import trained_sources, unseen_scores


def row(model, params=100, **scores):
    out = {"model": model, "params": params, "tta": "none", "val_macro_f1": 0.0}
    for source in ("fer2013", "real", "expw"):
        for split in ("val", "test"):
            for key in ("accuracy", "macro_f1"):
                out[f"{source}_{split}_{key}"] = scores.get(f"{source}_{split}", 0.0)
    return out


def test_each_source_is_scored_by_the_best_model_not_trained_on_it():
    rows = [row("tuned", fer2013_val=0.80, expw_test=0.46, real_test=0.65),
            row("cnn_small", fer2013_val=0.70, expw_test=0.50, real_test=0.61),
            row("finetuned", fer2013_val=0.79, real_val=0.90, expw_test=0.55, real_test=0.87),
            row("finetuned_expw", fer2013_val=0.78, real_val=0.88, expw_val=0.6, expw_test=0.62)]
    trained_on = {"tuned": {"fer2013"}, "cnn_small": {"fer2013"}, "finetuned": {"fer2013", "real"},
                  "finetuned_expw": {"fer2013", "real", "expw"}}
    unseen = unseen_scores(rows, trained_on, ["expw", "fer2013", "real"], "val_macro_f1")
    # on expw: chosen by validation on the other sources (finetuned: mean 0.845), never by expw test
    assert unseen["expw"] == {"model": "finetuned", "test_accuracy": 0.55, "test_macro_f1": 0.55}
    assert unseen["real"]["model"] == "tuned"
    assert "fer2013" not in unseen  # every model trained on it


def test_candidates_are_ranked_on_the_same_sources_not_each_on_its_own():
    # A FER2013-only model is not preferred for scoring well on the one source it knows: on
    # the sources other than expw, the fine-tune without expw has the better mean.
    rows = [row("tuned", fer2013_val=0.78, real_val=0.58, expw_test=0.40),
            row("finetuned_without_expw", fer2013_val=0.74, real_val=0.70, expw_test=0.47)]
    trained_on = {"tuned": {"fer2013"}, "finetuned_without_expw": {"fer2013", "real"}}
    unseen = unseen_scores(rows, trained_on, ["expw", "fer2013", "real"], "val_macro_f1")
    assert unseen["expw"]["model"] == "finetuned_without_expw"


def test_a_fine_tune_lists_its_sources_and_other_stages_read_fer2013():
    assert trained_sources({"drawn": {"fer2013": {}, "expw": {}}}) == {"fer2013", "expw"}
    assert trained_sources({"val_accuracy": 0.8}) == {"fer2013"}
