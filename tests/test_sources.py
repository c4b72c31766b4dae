"""Several sources: split by person where a group pattern is given, a declared training mix,
and the champion chosen on the mean over sources."""
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferpipe.files import load_split, write_npz
from ferpipe.pipeline.config import ConfigError, from_dict
from ferpipe.pipeline.data import PrepareConfig, PrepareParams, prepare, prepare_all
from ferpipe.pipeline.params import SourceMix
from ferpipe.pipeline.tiny import make_archive, synthetic_image

CLASSES = ["happy", "neutral", "sad", "surprise"]


def people_zip(path: Path, people: int = 30, photos: int = 4, seed: int = 0) -> Path:
    """<class>/<Person>_<NNNN>.jpg: each person has `photos` photos, all of one class."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as archive:
        for p in range(people):
            label = p % len(CLASSES)
            for i in range(photos):
                buf = io.BytesIO()
                Image.fromarray(synthetic_image(label, rng, 64)).save(buf, format="JPEG")
                archive.writestr(f"faces/{CLASSES[label]}/Person_{p:03d}_{i + 1:04d}.jpg", buf.getvalue())
    return path


def test_a_grouped_source_keeps_each_person_in_one_split(tmp_path):
    source = people_zip(tmp_path / "people.zip")
    cfg = PrepareConfig(source=str(source), classes=CLASSES, val_fraction=0.2, test_fraction=0.2,
                        group_pattern=r"(.+)_\d+")
    report = prepare(cfg, tmp_path / "out", tmp_path / "data.json")
    import pandas as pd

    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    person = manifest.source.str.extract(r"(Person_\d+)_")[0]
    assert (manifest.groupby(person).split.nunique() == 1).all()
    for split in ("val", "test"):
        assert all(report["counts"][split][c] > 0 for c in CLASSES)  # stratified by class
    # an image-level split of the same photos puts people in two splits
    plain = prepare(PrepareConfig(source=str(source), classes=CLASSES, val_fraction=0.2,
                                  test_fraction=0.2), tmp_path / "plain", tmp_path / "plain.json")
    assert plain["kept"] == report["kept"]
    manifest = pd.read_csv(tmp_path / "plain" / "manifest.csv")
    assert (manifest.groupby(manifest.source.str.extract(r"(Person_\d+)_")[0]).split.nunique() > 1).any()


def test_a_file_outside_the_group_pattern_is_named(tmp_path):
    source = people_zip(tmp_path / "people.zip")
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(0, np.random.default_rng(99), 64)).save(buf, format="PNG")
    photo = buf.getvalue()  # not a duplicate: duplicates are dropped before the split
    with zipfile.ZipFile(source, "a") as archive:
        archive.writestr("faces/happy/nobody.jpg", photo)
    cfg = PrepareConfig(source=str(source), classes=CLASSES, val_fraction=0.2, test_fraction=0.2,
                        group_pattern=r"(.+)_\d+")
    with pytest.raises(ValueError, match=r"people.zip: file 'faces/happy/nobody.jpg' does not match "
                                         r"prepare group_pattern '\(\.\+\)_\\d\+'; rename it or fix the pattern$"):
        prepare(cfg, tmp_path / "out", tmp_path / "data.json")


def test_group_pattern_needs_a_group():
    with pytest.raises(ConfigError, match=r"group_pattern '.+' needs a \(group\)"):
        from_dict(PrepareParams, {"sources": {"a": {"source": "x.zip", "group_pattern": r".+_\d+"}}}, "prepare")


def test_every_source_is_prepared_into_its_own_folder(tmp_path):
    fer = make_archive(tmp_path / "fer.zip", CLASSES, per_class=20)
    photos = people_zip(tmp_path / "people.zip")
    params = from_dict(PrepareParams, {"sources": {
        "fer2013": {"source": str(fer), "val_fraction": 0.2, "test_fraction": 0.2},
        "real": {"source": str(photos), "val_fraction": 0.2, "test_fraction": 0.2,
                 "group_pattern": r"(.+)_\d+"}}, "classes": CLASSES}, "prepare")
    report = prepare_all(params, tmp_path / "prepared", tmp_path / "data.json")
    assert set(report["sources"]) == {"fer2013", "real"}
    for name in ("fer2013", "real"):
        x, y, classes = load_split(tmp_path / "prepared" / name, "train")
        assert x.shape[1:] == (48, 48) and classes == CLASSES
    assert report["kept"] == sum(r["kept"] for r in report["sources"].values())


def test_the_mix_caps_each_class_and_repeats_a_source(tmp_path):
    from ferpipe.pipeline.finetune import mix_sources

    for name, counts in (("a", [50, 40, 3, 5]), ("b", [10, 10, 10, 10])):
        y = np.repeat(np.arange(4), counts)
        write_npz(tmp_path / name / "train.npz", x=np.zeros((len(y), 48, 48), np.uint8), y=y,
                  classes=np.array(CLASSES))
    mix = {"a": SourceMix(per_class_cap=20), "b": SourceMix(repeat=2)}
    x, y, classes, drawn, origin = mix_sources(tmp_path, mix, seed=1)
    assert drawn == {"a": {"happy": 20, "neutral": 20, "sad": 3, "surprise": 5},
                     "b": {"happy": 20, "neutral": 20, "sad": 20, "surprise": 20}}
    assert len(x) == len(y) == 48 + 80 and classes == CLASSES
    assert origin.tolist() == [0] * 48 + [1] * 80
    with pytest.raises(FileNotFoundError, match="no prepared source 'c'"):
        mix_sources(tmp_path, {"c": SourceMix()}, seed=1)


def test_distilled_targets_mix_the_base_model_in_only_where_a_source_asks():
    import keras

    from ferpipe.pipeline.finetune import distilled_targets

    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="softmax")])
    x = np.random.default_rng(0).integers(0, 255, (6, 48, 48), dtype=np.uint8)
    y, origin = np.array([0, 1, 2, 3, 0, 1]), np.array([0, 0, 0, 1, 1, 1])
    targets = distilled_targets(model, x, y, origin, [0.5, 0.0], batch_size=4)
    teacher = model.predict(x[:3, ..., None], verbose=0)
    np.testing.assert_allclose(targets[:3], 0.5 * np.eye(4)[y[:3]] + 0.5 * teacher, atol=1e-5)
    np.testing.assert_array_equal(targets[3:], np.eye(4)[y[3:]])  # share 0: the labels alone
    np.testing.assert_allclose(targets.sum(axis=1), 1, atol=1e-5)


def test_frozen_batchnorm_keeps_the_base_statistics_while_the_rest_trains():
    import keras

    from ferpipe.pipeline.finetune import freeze_batchnorm

    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="inner_bn")],
                             name="backbone")
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="outer_bn"),
                              inner, keras.layers.Dense(2, activation="softmax")])
    freeze_batchnorm(model)
    before = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(5.0, 3.0, (64, 4)).astype("float32")  # far from mean 0, var 1
    model.fit(x, np.arange(64) % 2, epochs=2, batch_size=16, verbose=0)
    after = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    moved = {p for p, w in before.items() if not np.array_equal(w, after[p])}
    assert moved and all("dense" in p for p in moved)  # gammas, betas and moving stats stay


def test_the_finetune_averages_and_freezes_as_its_params_say(tmp_path):
    import keras

    from ferpipe.pipeline.finetune import finetune
    from ferpipe.pipeline.params import FinetuneConfig, TrainConfig

    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("val", 16)):
        write_npz(tmp_path / "a" / f"{split}.npz", x=rng.integers(0, 255, (n, 48, 48), dtype=np.uint8),
                  y=np.arange(n) % 4, classes=np.array(CLASSES))
    base = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Rescaling(1 / 255),
                             keras.layers.Flatten(), keras.layers.BatchNormalization(),
                             keras.layers.Dense(4, activation="softmax")])
    base.save(tmp_path / "base.keras")
    train_cfg = TrainConfig(batch_size=16, ema_momentum=0.0)
    # 4 steps an epoch x 13 epochs x (1 - 0.9) >= 5 time constants: the average is used.
    cfg = FinetuneConfig(mix={"a": SourceMix()}, epochs=13, ema_momentum=0.9, freeze_batchnorm=True)
    model, result, _ = finetune(cfg, train_cfg, tmp_path, tmp_path / "base.keras")
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.9
    assert not model.layers[2].trainable and model.layers[3].trainable
    assert result["epochs_run"] >= 1
    cfg = FinetuneConfig(mix={"a": SourceMix()}, epochs=1)
    model, _, _ = finetune(cfg, TrainConfig(batch_size=16, ema_momentum=0.999), tmp_path,
                           tmp_path / "base.keras")
    assert not model.optimizer.use_ema and model.layers[2].trainable  # the defaults: neither


def test_a_held_out_source_leaves_the_mix_and_nothing_else():
    from ferpipe.pipeline.params import FinetuneConfig

    cfg = FinetuneConfig(mix={"a": SourceMix(), "b": SourceMix(repeat=2)}, epochs=5, held_out=["b"])
    rest = cfg.without("b")
    assert list(rest.mix) == ["a"] and rest.held_out == []
    assert rest.model_dump(exclude={"mix", "held_out"}) == cfg.model_dump(exclude={"mix", "held_out"})
    with pytest.raises(ValueError, match="'a' is not in params finetune.held_out"):
        cfg.without("a")


def test_the_champion_has_the_best_mean_over_sources():
    from ferpipe.pipeline.evaluate import choose_champion

    rows = [{"model": "fer_expert", "val_macro_f1": (0.80 + 0.50) / 2, "params": 1},
            {"model": "both", "val_macro_f1": (0.78 + 0.70) / 2, "params": 1}]
    assert choose_champion(rows, "val_macro_f1") == "both"
