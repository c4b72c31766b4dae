"""The typed params of every stage: one pydantic model per section of params.yaml.

They live here, apart from the modules that use them, because those import TensorFlow
(about 12 s): a stage loads and checks its params from this module first, so a typo in
params.yaml is reported in a second. Every field declares its type and range beside it, every
name is a closed list (`Literal`), unknown keys are refused and values are not coerced (a
YAML string is not a number); a model validator holds only the checks that involve two fields.
`ferpipe.pipeline.config.load_section` turns a validation error into one line naming the key.
"""
from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class Params(BaseModel):
    """A params section: strict types, no unknown keys."""
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


# Shapes shared by many fields.
Count = Annotated[int, Field(ge=1)]  # 1, 2, ...
NonNegative = Annotated[int, Field(ge=0)]  # 0 usually means "off" or "all"
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1): dropout, smoothing, ...
Probability = Annotated[float, Field(ge=0, le=1)]
LearningRate = Annotated[float, Field(gt=0, le=1)]  # (0, 1]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what numpy and TensorFlow seeds accept
NonEmpty = Field(min_length=1)


def _no_bool(value: object) -> object:
    # `True == 1` in Python, so a yes/no would pass as a kernel size of 1.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


NoBool = BeforeValidator(_no_bool)

Optimizer = Literal["adam", "adamw", "sgd"]  # ferpipe.pipeline.train.make_optimizer builds each
Backbone = Literal["mobilenet", "mobilenet_v2", "vgg16", "resnet50_v2", "efficientnet_b0"]
BACKBONE_NAMES: tuple[str, ...] = typing.get_args(Backbone)  # ferpipe.pipeline.models.BACKBONES' keys
ALPHA_BACKBONES = {"mobilenet", "mobilenet_v2"}
# Width multipliers Keras publishes ImageNet weights for.
WEIGHTS_ALPHAS = {"mobilenet": (0.25, 0.5, 0.75, 1.0), "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}
# ferpipe.pipeline.evaluate.SELECTION says which way each is better; only validation metrics choose.
SelectionMetric = Literal["val_accuracy", "val_macro_f1", "val_log_loss"]


class TrainConfig(Params):
    batch_size: Count = 64
    optimizer: Optimizer = "adam"
    weight_decay: Fraction = 1e-4  # adamw and sgd
    label_smoothing: Fraction = 0.0
    class_weights: bool = False
    early_stopping_patience: NonNegative = 5
    reduce_lr_patience: NonNegative = 2
    reduce_lr_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    min_learning_rate: Fraction = 1e-6
    # What early stopping, the LR plateau and the kept epoch follow: what we judge models by.
    selection_metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    # Polyak averaging of the weights (0: off). Validation, early stopping and the saved model
    # all use the averaged weights, so one lucky epoch of raw weights is not what is kept.
    ema_momentum: Fraction = 0.0
    max_train_images: NonNegative = 0  # 0: all; a seeded subset otherwise (tiny runs)
    mixed_precision: bool = False
    seed: Seed = 42


class CNNSpec(Params):
    """A hand-built CNN: conv blocks, each followed by max-pooling, then a dense head."""
    filters: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], NonEmpty]
    convs_per_block: Count = 1
    kernel: Annotated[Literal[1, 3, 5, 7], NoBool] = 3
    activation: Literal["relu", "leaky_relu", "elu"] = "relu"
    batch_norm: bool = False
    block_dropout: Fraction = 0.0
    head: Literal["flatten", "gap"] = "flatten"
    dense_units: list[Annotated[int, Field(ge=1, le=65536)]] = [128]
    dense_dropout: Fraction = 0.0
    l2: Fraction = 0.0
    # Random shifts of up to this fraction of the side, drawn afresh for every training image
    # by the trainer's input pipeline (not a model layer: Keras 3 image layers default to
    # training=True, so one inside the model would shift at inference under a plain call). 0: off.
    random_shift: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    # keras.layers.MixUp on each training batch, Beta(alpha, alpha) weights (0: off). Per model,
    # like the shifts: a 4-epoch net has no overfitting for it to cure.
    mixup_alpha: Annotated[float, Field(ge=0, le=10)] = 0.0
    epochs: Count = 20  # 0 would train nothing and leave an uncompiled model
    learning_rate: LearningRate = 1e-3


def weights_file_facts(weights: str) -> tuple[str, float, bool] | None:
    """(backbone, alpha, has top) read from an official Keras MobileNet weights file name.

    `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5` -> mobilenet_v2, 0.5;
    `mobilenet_2_5_224_tf_no_top.h5` -> mobilenet, 0.25. None for any other name."""
    name = Path(weights).name
    found = re.fullmatch(r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_(\d+(?:\.\d+)?)_\d+"
                         r"(_no_top)?\.h5", name)
    if found:
        return "mobilenet_v2", float(found[1]), not found[2]
    found = re.fullmatch(r"mobilenet_(1_0|7_5|5_0|2_5)_\d+_tf(_no_top)?\.h5", name)
    if found:
        return "mobilenet", {"1_0": 1.0, "7_5": 0.75, "5_0": 0.5, "2_5": 0.25}[found[1]], not found[2]
    return None


class TransferSpec(Params):
    """An ImageNet backbone with a new head; trained head-first, then fine-tuned."""
    backbone: Backbone
    weights: str  # a local .h5 file, "imagenet" to download where a network exists, or "none"
    alpha: Annotated[float, Field(gt=0)] = 1.0  # width, mobilenet* only
    input_px: Annotated[int, Field(ge=32, le=1024)] = 96  # Keras' backbones need 32 px or more
    dense_units: Annotated[int, Field(ge=1, le=65536)] = 128
    dropout: Fraction = 0.3
    head_epochs: NonNegative = 3
    head_learning_rate: LearningRate = 1e-3
    finetune_epochs: NonNegative = 6
    finetune_layers: NonNegative = 40
    finetune_learning_rate: LearningRate = 1e-4

    @model_validator(mode="after")
    def _weights_match(self) -> TransferSpec:
        self._check()
        return self

    def _check(self) -> None:
        if self.head_epochs + self.finetune_epochs < 1:
            raise ValueError("head_epochs + finetune_epochs must be >= 1, got 0: nothing would be trained")
        if self.backbone not in ALPHA_BACKBONES or self.weights in ("none", ""):
            return
        facts = weights_file_facts(self.weights)
        if facts is not None:
            backbone, alpha, has_top = facts
            if backbone != self.backbone:
                raise ValueError(f"weights file '{self.weights}' is for backbone {backbone}, "
                                 f"not {self.backbone}")
            if alpha != self.alpha:
                raise ValueError(f"alpha {self.alpha:g} does not match weights file '{self.weights}' "
                                 f"(made for alpha {alpha:g}): set alpha: {alpha:g} or use the "
                                 f"alpha {self.alpha:g} file")
            if has_top:
                raise ValueError(f"weights file '{self.weights}' includes the classifier top; "
                                 "use the '_no_top' file")
        elif self.alpha not in WEIGHTS_ALPHAS[self.backbone]:
            raise ValueError(f"alpha {self.alpha:g}: {self.backbone} ImageNet weights exist only for "
                             f"alpha {list(WEIGHTS_ALPHAS[self.backbone])} (or set weights: none)")


def check_weights_file(spec: TransferSpec, name: str, params_file: Path | str = "params.yaml") -> None:
    """FileNotFoundError naming the params key if `spec.weights` is a local file that is missing:
    checked as params load, not after MLflow and TensorFlow have (tens of seconds later)."""
    if spec.weights not in ("imagenet", "none", "") and not Path(spec.weights).is_file():
        raise FileNotFoundError(f"{params_file}:transfer.{name}.weights: file '{spec.weights}' not "
                                "found; run `dvc pull`, put the official Keras '_no_top' .h5 file "
                                "there, or set weights: imagenet where a network exists")


class SearchSpace(Params):
    """The training recipe of one baseline family, searched around that baseline's own values.

    Each list holds the values to try; the baseline's own value is added to its list and is the
    default, and the first trial is the baseline's recipe unchanged."""
    learning_rate: list[LearningRate] = [3e-4, 1e-3, 3e-3]
    dropout: list[Fraction] = [0.3, 0.4, 0.5]  # dense; blocks get half
    random_shift: list[Annotated[float, Field(ge=0, lt=0.5)]] = [0.0, 0.1, 0.15]
    optimizer: list[Optimizer] = ["adam", "sgd"]


class TuneConfig(Params):
    # The `baselines` entry whose recipe is searched and beaten (checked against that section).
    baseline: Annotated[str, NonEmpty] = "vgg_bn"
    algorithm: Literal["random", "bayesian", "hyperband"] = "random"
    objective: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    max_trials: Count = 6  # random and bayesian; hyperband sizes itself from max_epochs/factor
    max_epochs: Count = 2  # per trial (hyperband: the most any trial gets)
    factor: Annotated[int, Field(ge=2)] = 2  # hyperband only
    search_train_images: NonNegative = 16000  # seeded subset of the augmented set; 0: all
    seed: Seed = 42
    space: SearchSpace = SearchSpace()


class SourceMix(Params):
    """How one prepared source enters the fine-tune's training set each epoch."""
    # At most this many training images of each class (a seeded draw; 0: all of them): caps
    # a source's common classes so appending it does not shift the class priors.
    per_class_cap: NonNegative = 0
    repeat: Count = 1  # each drawn image this many times an epoch (a source's weight)
    # Share of the base model's own probabilities in this source's training targets (0: the
    # labels alone). On a source the base model learnt, it keeps that knowledge from drifting
    # while the new source is learnt (distillation, as in "learning without forgetting").
    distill: Fraction = 0.0


HELD_OUT_PREFIX = "finetuned_without_"  # the model of finetune_without@<source>


class FinetuneConfig(Params):
    """Params `finetune`: continue training a trained model on a mix of the prepared sources."""
    base: Annotated[str, NonEmpty] = "tuned"  # a model under models/trained/<base>/
    mix: Annotated[dict[str, SourceMix], NonEmpty] = {"fer2013": SourceMix()}
    epochs: Count = 3
    learning_rate: LearningRate = 1e-4
    random_shift: Fraction = 0.1
    random_zoom: Fraction = 0.0  # zoom in and out by up to this fraction (framing range)
    mixup_alpha: Annotated[float, Field(ge=0)] = 0.0
    # Degradation augmentation (pipeline/degrade.py): each kind (downscale, blur, gamma, noise,
    # erasing) applied to each training face with this probability (0: off).
    degrade: Probability = 0.0
    # Batch-norm layers kept in inference mode with their statistics as the base model learnt
    # them, so the new source's pixel statistics do not move the features the old one relies on.
    freeze_batchnorm: bool = False
    # Polyak averaging in the fine-tune, in place of train.ema_momentum (0: off); as there,
    # used only where the phase runs >= 5 time constants (train.uses_ema).
    ema_momentum: Fraction = 0.0
    seed: Seed = 42
    # Each source here is also left out of a second fine-tune of the same recipe (stage
    # finetune_without@<source>): how the recipe holds up on a kind of picture it never saw.
    held_out: list[str] = []

    @model_validator(mode="after")
    def _held_out_from_mix(self) -> FinetuneConfig:
        for source in self.held_out:
            if source not in self.mix or len(self.mix) < 2:
                raise ValueError(f"held_out: '{source}' must be one of two or more sources in "
                                 f"mix ({sorted(self.mix)}), so the rest can be trained on")
        return self

    def without(self, source: str) -> FinetuneConfig:
        """The same recipe with `source` left out of the mix: a model that never saw its pictures."""
        if source not in self.held_out:
            raise ValueError(f"'{source}' is not in params finetune.held_out ({self.held_out})")
        return self.model_copy(update={"mix": {k: v for k, v in self.mix.items() if k != source},
                                       "held_out": []})


class EvaluateConfig(Params):
    # The champion has the best mean of this over the sources' validation splits (every source
    # weighs the same, however many faces it has).
    selection_metric: SelectionMetric = "val_macro_f1"
    # Test-time variants scored for every model; the champion is chosen among all of them on
    # validation, so a variant is released only where it helps there. flip: mean over mirror.
    tta: list[Literal["none", "flip"]] = ["none", "flip"]
    ece_bins: Annotated[int, Field(ge=2, le=1000)] = 15
    latency_calls: Count = 200
    batch_size: Count = 256
    registered_model_name: Annotated[str, NonEmpty] = "fer-emotion"


class ReleaseConfig(Params):
    max_megabytes: Annotated[float, Field(gt=0)] = 10.0
    sample_images: Annotated[int, Field(ge=1, le=1000)] = 8
    # The released model.onnx must give Keras's probabilities within this on every test face
    # (measured: 8.3e-7 at most over 2,000 faces) and change no prediction.
    onnx_max_abs_diff: Annotated[float, Field(gt=0, le=1)] = 1e-4


class AugmentConfig(Params):
    copies: Annotated[int, Field(ge=0, le=20)] = 2  # augmented copies per training image, beside the original
    brightness: Fraction = 0.3  # factor drawn from [1 - b, 1 + b]
    flip_prob: Probability = 0.5
    shear: Annotated[float, Field(ge=0, le=1)] = 0.3  # radians, as Keras' shear_range (1 rad is 57 degrees)
    rotation_deg: Annotated[float, Field(ge=0, le=180)] = 10.0
    zoom: Fraction = 0.1
    shift: Fraction = 0.1  # fraction of the image side
    seed: Seed = 42
    preview_images: Annotated[int, Field(ge=1, le=64)] = 8  # rows of plots/augment_preview.png


SplitFraction = Annotated[float, Field(gt=0, lt=0.5)]


class PrepareShared(Params):
    """The prepare settings every source shares.

    Images are decoded and converted to 8-bit grayscale by the core, as at use. One that is
    not image_px x image_px is cut to its centred square (face crops are centred, so this keeps
    the face and its aspect ratio instead of squashing it) and resized by the core's crop
    function (area averaging). image_px x image_px images pass unchanged; 16-bit grayscale is
    scaled to 8 bits.
    The max_* limits are checked before an entry is read (its size in the archive) and
    before an image is decoded (the size in its header)."""
    classes: list[str] = ["happy", "neutral", "sad", "surprise"]
    image_px: Annotated[int, Field(ge=8, le=512)] = 48
    blank_std_threshold: float = 2.0
    skip_corrupt: bool = False
    seed: Seed = 42
    max_entry_megabytes: Annotated[float, Field(gt=0)] = 50.0
    max_total_megabytes: Annotated[float, Field(gt=0)] = 4096.0
    max_image_megapixels: Annotated[float, Field(gt=0)] = 25.0

    @model_validator(mode="after")
    def _distinct_classes(self) -> PrepareShared:
        if len(self.classes) < 2 or len({c.lower() for c in self.classes}) != len(self.classes):
            raise ValueError(f"classes must be 2 or more distinct names (case-insensitive, as "
                             f"folder names are), got {self.classes}")
        return self


class SourceSpec(Params):
    """One source of faces under `prepare.sources.<name>`: where it is and how it is split."""
    source: str
    val_fraction: SplitFraction = 0.1
    test_fraction: SplitFraction = 0.1
    # A regular expression over each file's stem whose first group names its group (a person,
    # a photo): then val and test are drawn by group, stratified by class, so no group is in two splits.
    group_pattern: str = ""
    # "center": the centred square of each image (face crops); "detect": the face found by the
    # core's detector and cut by its crop function, as at use (faces with context around them).
    framing: Literal["center", "detect"] = "center"

    @model_validator(mode="after")
    def _source_and_pattern(self) -> SourceSpec:
        if not self.source.strip():
            raise ValueError("source must name a zip archive or a folder, got ''")
        if self.group_pattern:
            try:
                groups = re.compile(self.group_pattern).groups
            except re.error as err:
                raise ValueError(f"group_pattern {self.group_pattern!r} is not a regular "
                                 f"expression ({err})") from None
            if groups < 1:
                raise ValueError(f"group_pattern {self.group_pattern!r} needs a (group) naming "
                                 "the person, e.g. '(.+)_\\d+'")
        return self


class PrepareConfig(SourceSpec, PrepareShared):
    """Everything `prepare` needs for one source: its spec and the shared settings."""


class PrepareParams(PrepareShared):
    """Params section `prepare`: the sources, and the settings they share."""
    sources: Annotated[dict[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")], SourceSpec], NonEmpty]

    def for_source(self, name: str) -> PrepareConfig:
        return PrepareConfig(**self.sources[name].model_dump(),
                             **self.model_dump(exclude={"sources"}))
