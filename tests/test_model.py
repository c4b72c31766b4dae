"""Model checks: every builder's shape, learning on a toy task, save/load, transfer weights."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from conftest import ROOT

# TensorFlow loads inside the tests, not at collection: the fast tier collects without it.
from ferpipe.pipeline.params import BACKBONE_NAMES, CNNSpec, TrainConfig, TransferSpec
from ferpipe.pipeline.tiny import synthetic_image

if TYPE_CHECKING:
    from ferpipe.pipeline.train import TrainData

WEIGHTS = ROOT / "data" / "weights"
REAL_BACKBONES = [
    ("mobilenet", 0.25, "mobilenet_2_5_224_tf_no_top.h5"),
    ("mobilenet_v2", 0.35, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"),
    ("mobilenet_v2", 0.5, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"),
]
CNN_SPECS = {
    "study_small": CNNSpec(filters=[8, 16, 16], activation="leaky_relu", dense_units=[32], dense_dropout=0.3),
    "bn_gap": CNNSpec(filters=[8, 16], batch_norm=True, head="gap", block_dropout=0.1, dense_units=[16]),
    "vgg": CNNSpec(filters=[8, 16], convs_per_block=2, batch_norm=True, kernel=5, l2=1e-4, dense_units=[16]),
}


def toy_data(n_per_class: int = 40, seed: int = 0) -> TrainData:
    from ferpipe.pipeline.train import TrainData
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class)
    x = np.stack([synthetic_image(int(label), rng) for label in y])[..., None]
    cut = int(len(y) * 0.75)
    order = rng.permutation(len(y))
    train, val = order[:cut], order[cut:]
    return TrainData(x[train], y[train], x[val], y[val], ["a", "b", "c", "d"])


def weights_file(name: str) -> Path:
    path = WEIGHTS / name
    assert path.exists(), f"{path} missing: run `dvc pull` (the transfer tests use the real files)"
    return path


@pytest.mark.parametrize("name", CNN_SPECS)
def test_cnn_output_is_a_distribution_per_image(name):
    from ferpipe.pipeline.models import build_cnn
    model = build_cnn(CNN_SPECS[name], num_classes=4)
    probs = model(np.random.default_rng(0).integers(0, 255, (3, 48, 48, 1)).astype("float32")).numpy()
    assert probs.shape == (3, 4) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", CNN_SPECS)
def test_cnn_loss_falls_on_a_learnable_toy_task(name):
    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.train import Phase, fit, set_determinism
    set_determinism(0)
    data = toy_data()
    cfg = TrainConfig(batch_size=16, early_stopping_patience=10)
    result = fit(build_cnn(CNN_SPECS[name], 4), data, cfg, [Phase("t", 6, 3e-3)], log_to_mlflow=False)
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < 0.7 * losses[0]
    # Training accuracy, not validation: batch-norm moving statistics need more steps than this.
    assert result["history"][-1]["accuracy"] > 0.6  # chance is 0.25


def test_training_is_reproducible():
    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.train import Phase, fit, set_determinism
    runs = []
    for _ in range(2):
        set_determinism(7)
        model = build_cnn(CNN_SPECS["bn_gap"], 4)
        fit(model, toy_data(), TrainConfig(batch_size=16), [Phase("t", 2, 1e-3)], log_to_mlflow=False)
        runs.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_save_then_load_gives_equal_predictions_and_stable_bytes(tmp_path):
    import keras

    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.train import save_model
    model = build_cnn(CNN_SPECS["vgg"], 4)
    model.compile("adam", "categorical_crossentropy")  # a compiled model must save without optimizer
    save_model(model, tmp_path / "a.keras")
    save_model(model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.models.load_model(tmp_path / "a.keras")
    x = toy_data().x_val[:8].astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backbone, alpha, filename", REAL_BACKBONES)
def test_transfer_with_real_imagenet_weights(tmp_path, backbone, alpha, filename):
    import keras

    from ferpipe.pipeline.models import build_transfer, unfreeze_top
    from ferpipe.pipeline.train import save_model
    spec = TransferSpec(backbone=backbone, alpha=alpha, weights=str(weights_file(filename)), input_px=32,
                        dense_units=8)
    model, base = build_transfer(spec, num_classes=4)
    random_base = build_transfer(TransferSpec(backbone=backbone, alpha=alpha, weights="none",
                                              input_px=32), 4)[1]
    assert not np.allclose(base.get_weights()[0], random_base.get_weights()[0])  # really loaded
    assert not any(layer.trainable for layer in base.layers)
    x = toy_data().x_val[:4].astype("float32")
    probs = model(x).numpy()
    assert probs.shape == (4, 4) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    save_model(model, tmp_path / "m.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras")(x).numpy(), probs,
                               rtol=1e-5, atol=1e-6)
    trainable = unfreeze_top(base, 10)
    assert trainable > 0
    assert not any(layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert not any(layer.trainable for layer in base.layers[:-10])


def test_transfer_fine_tunes_on_a_toy_task():
    from ferpipe.pipeline.models import build_transfer, unfreeze_top
    from ferpipe.pipeline.train import Phase, fit, set_determinism
    set_determinism(0)
    spec = TransferSpec(backbone="mobilenet_v2", alpha=0.35, input_px=32, dense_units=16,
                        weights=str(weights_file(REAL_BACKBONES[1][2])))
    model, base = build_transfer(spec, 4)
    phases = [Phase("head", 3, 3e-3), Phase("finetune", 2, 1e-4, before=lambda _: unfreeze_top(base, 20))]
    result = fit(model, toy_data(), TrainConfig(batch_size=16, early_stopping_patience=5), phases,
                 log_to_mlflow=False)
    assert [r["phase"] for r in result["history"]] == ["head"] * 3 + ["finetune"] * 2
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]


@pytest.mark.parametrize("backbone", sorted(BACKBONE_NAMES))  # == BACKBONES' keys (test_params)
def test_in_model_preprocessing_equals_the_backbones_own(backbone):
    import importlib

    from ferpipe.pipeline.models import BACKBONES, preprocessing_layers
    modules = {"mobilenet": "mobilenet", "mobilenet_v2": "mobilenet_v2", "vgg16": "vgg16",
               "resnet50_v2": "resnet_v2", "efficientnet_b0": "efficientnet"}
    own = importlib.import_module(f"keras.applications.{modules[backbone]}").preprocess_input
    gray = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    rgb = np.repeat(gray, 3, axis=-1)
    ours = rgb
    for layer in preprocessing_layers(BACKBONES[backbone][1]):
        ours = layer(ours)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(own(rgb.copy())), rtol=1e-5, atol=1e-4)


def test_missing_weights_file_says_where_to_put_it():
    from ferpipe.pipeline.models import resolve_weights
    with pytest.raises(FileNotFoundError, match="dvc pull"):
        resolve_weights("data/weights/nowhere.h5")


def test_tuner_builds_the_baselines_architecture_with_each_recipe():
    import keras_tuner as kt

    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.tune import CNNHyperModel, TuneConfig
    base = CNN_SPECS["vgg"]
    hypermodel = CNNHyperModel(TuneConfig(), TrainConfig(), base, num_classes=4)
    reference = build_cnn(base, 4)
    for shift in (0.0, 0.15):
        hp = kt.HyperParameters()
        hp.Fixed("random_shift", shift)
        model = hypermodel.build(hp)
        assert [type(layer) for layer in model.layers] == [type(layer) for layer in reference.layers]
        assert model.count_params() == reference.count_params()
        spec, optimizer = hypermodel.spec(hp, epochs=3)
        assert spec.random_shift == shift and spec.filters == base.filters and optimizer == "adam"


def test_tuner_trials_train_with_the_baselines_whole_recipe(monkeypatch):
    """A trial differs from the baseline only in what the search sets: mixup (not searched)
    must come along, or the search would rank recipes the baseline never trains with."""
    import keras_tuner as kt

    import ferpipe.pipeline.tune
    from ferpipe.pipeline.train import Phase
    from ferpipe.pipeline.tune import CNNHyperModel, TuneConfig
    phases = []
    monkeypatch.setattr(ferpipe.pipeline.tune, "fit", lambda model, data, cfg, ph, **kw: phases.extend(ph)
                        or {"val_accuracy": 0.5, "val_loss": 1.0})
    base = CNNSpec(filters=[8], dense_units=[8], random_shift=0.1, mixup_alpha=0.2, epochs=22)
    hp = kt.HyperParameters()
    hp.Fixed("random_shift", 0.15)
    CNNHyperModel(TuneConfig(), TrainConfig(), base, 4).fit(hp, None, None, epochs=3, initial_epoch=1)
    [phase] = phases
    assert (phase.epochs, phase.mixup_alpha, phase.random_shift) == (2, 0.2, 0.15)
    assert Phase.for_spec("train", base) == Phase("train", 22, base.learning_rate, random_shift=0.1,
                                                  mixup_alpha=0.2)


def test_selection_follows_val_accuracy_with_ema_shifts_and_mixup_byte_for_byte(tmp_path):
    """The recipe the champion trains with: the kept weights are the best epoch by validation
    accuracy (EMA weights), and two runs save the very same bytes."""
    import keras

    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.train import Phase, fit, save_model, set_determinism
    cfg = TrainConfig(batch_size=16, ema_momentum=0.9, label_smoothing=0.1,
                      early_stopping_patience=2)
    files, results = [], []
    for run in range(2):
        keras.backend.clear_session()  # layer names restart, as in a fresh stage process
        set_determinism(3)
        model = build_cnn(CNN_SPECS["bn_gap"], 4)
        results.append(fit(model, toy_data(), cfg, [Phase("t", 7, 3e-3, random_shift=0.1, mixup_alpha=0.2)],
                           log_to_mlflow=False))
        save_model(model, tmp_path / f"{run}.keras")
        files.append((tmp_path / f"{run}.keras").read_bytes())
    assert files[0] == files[1]
    history = results[0]["history"]
    best = max(history, key=lambda row: row["val_accuracy"])
    assert results[0]["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert results[0]["best_epoch"] == best["epoch"]


def test_flip_tta_is_the_mean_over_the_mirror_and_loads_with_plain_keras(tmp_path):
    import keras

    from ferpipe.pipeline.models import build_cnn, with_flip_tta
    from ferpipe.pipeline.train import save_model

    model = build_cnn(CNN_SPECS["vgg"], 4)
    x = toy_data().x_val[:6].astype("float32")
    expected = (model(x).numpy() + model(x[:, :, ::-1]).numpy()) / 2
    save_model(with_flip_tta(model), tmp_path / "tta.keras")
    loaded = keras.models.load_model(tmp_path / "tta.keras")
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_mixed_precision_trains_with_shifts_and_mixup():
    """train.mixed_precision with the champion's recipe: the data layers stay float32 (MixUp
    under the bf16 policy used to fail on mixing float32 weights with bf16 images)."""
    import keras

    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.train import Phase, fit, set_determinism
    cfg = TrainConfig(batch_size=16, early_stopping_patience=10, mixed_precision=True)
    try:
        set_determinism(0, mixed_precision=True)
        model = build_cnn(CNN_SPECS["vgg"], 4)
        result = fit(model, toy_data(), cfg, [Phase("t", 3, 3e-3, random_shift=0.1, mixup_alpha=0.2)],
                     log_to_mlflow=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.compute_dtype == "bfloat16"
    assert all(np.isfinite(row["loss"]) for row in result["history"])


def test_soft_targets_pass_through_the_dataset_as_given_and_mix_under_mixup():
    """Distilled targets ([N, k] floats) reach the loss unchanged; integer labels become one-hot."""
    from ferpipe.pipeline.train import make_dataset
    x = np.zeros((4, 2, 2, 1), np.uint8)
    soft = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [1.0, 0.0]], np.float32)
    _, labels = next(iter(make_dataset(x, soft, 2, 4)))
    np.testing.assert_allclose(labels.numpy(), soft)
    _, hard = next(iter(make_dataset(x, np.array([0, 1, 1, 0]), 2, 4)))
    np.testing.assert_array_equal(hard.numpy(), np.eye(2)[[0, 1, 1, 0]])
    _, mixed = next(iter(make_dataset(x, soft, 2, 4, shuffle_seed=0, mixup_alpha=0.2)))
    np.testing.assert_allclose(mixed.numpy().sum(axis=1), 1, atol=1e-5)
