"""Whether a baseline's training gives the same weights run to run on this machine: train it
briefly (a seeded subset of the augmented set) and print the md5 of its weights. Run it twice
and compare; with ONEDNN_MAX_CPU_ISA=AVX2 (or another ISA) it shows whether the bytes depend on
the CPU's kernels.

    nice uv run python bench/determinism.py [BASELINE] [EPOCHS] [--ema MOMENTUM]

`--ema` forces Polyak averaging with that momentum (the trainer uses it only in phases of
5 time constants or more, which a short run is not), to check the averaged path as well.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

IMAGES = 3000


def main() -> None:
    import numpy as np

    import ferpipe.pipeline.train as train
    from ferpipe.pipeline.config import load_entry, load_section
    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.params import CNNSpec, TrainConfig

    args = sys.argv[1:]
    ema = None
    if "--ema" in args:
        at = args.index("--ema")
        ema, args = float(args[at + 1]), args[:at] + args[at + 2:]
        train.uses_ema = lambda cfg, steps: cfg.ema_momentum > 0
    name = args[0] if args else "vgg_bn"
    epochs = int(args[1]) if len(args) > 1 else 1
    spec = load_entry("baselines", name, CNNSpec)
    cfg = load_section("train", TrainConfig)
    if ema is not None:
        cfg = cfg.model_copy(update={"ema_momentum": ema})
    train.set_determinism(cfg.seed, cfg.mixed_precision)
    data = train.load_train_data(train.AUGMENTED_DIR, train.PREPARED_DIR, IMAGES, cfg.seed)
    model = build_cnn(spec, len(data.classes), name=name)
    result = train.fit(model, data, cfg, [train.Phase.for_spec("train", spec, epochs=epochs)],
                       log_to_mlflow=False)
    digest = hashlib.md5(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()
    print(f"{name} epochs={epochs} ema={ema} weights_md5={digest} "
          f"train_accuracy={[round(r['accuracy'], 6) for r in result['history']]}")


if __name__ == "__main__":
    main()
