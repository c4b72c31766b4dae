"""Training throughput of the champion family (vgg_bn) on this CPU, side by side.

    python bench/train_throughput.py [--images 8192] [--model vgg_bn]

Each configuration runs in its own process (op determinism and the dtype policy are
process-wide), on the same synthetic 48x48 images, and is timed over the epochs after the
first (tracing and warm-up excluded):

- trainer:       ferpipe.pipeline.train.fit, as the pipeline trains (tf.data, callbacks, determinism)
- bare:          model.fit on in-memory arrays, same model/optimizer/batch, op determinism on
- bare_nondet:   the same without op determinism
- bare_bf16:     the same with the mixed_bfloat16 policy

It also counts the model's FLOPs per image and reports throughput as a fraction of the CPU's
fp32 peak (cores x clock x FLOPs per cycle, from /proc/cpuinfo's flags). Run it on a quiet
machine: anything running beside it halves the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CONFIGS = ["trainer", "bare", "bare_nondet", "bare_bf16"]


def model_spec(name: str):
    import yaml

    from ferpipe.pipeline.config import from_dict
    from ferpipe.pipeline.params import CNNSpec

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return from_dict(CNNSpec, params["baselines"][name], f"params.yaml:baselines.{name}")


def forward_flops(model) -> int:
    """Multiply-adds x 2 of the convolutions and dense layers, per image."""
    import keras

    flops = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k_h, k_w = layer.kernel_size
            flops += 2 * h * w * k_h * k_w * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)


def cpu_peak_gflops() -> tuple[float, str]:
    """fp32 peak: cores x GHz x FLOPs/cycle (2 FMA units x vector width x 2)."""
    info = Path("/proc/cpuinfo").read_text()
    mhz = max(float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz"))
    flags = next(line for line in info.splitlines() if line.startswith("flags"))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = len(os.sched_getaffinity(0))
    return cores * mhz / 1000 * 2 * lanes * 2, f"{cores} cores x {mhz / 1000:.2f} GHz x {4 * lanes} FLOP/cycle"


def run_one(config: str, name: str, images: int, epochs: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.params import TrainConfig
    from ferpipe.pipeline.train import Phase, TrainData, fit, set_determinism

    spec = model_spec(name)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 48, 48, 1), dtype=np.uint8)
    y = rng.integers(0, 4, images)
    cfg = TrainConfig(batch_size=64, mixed_precision=config == "bare_bf16")
    if config == "bare_nondet":
        keras.utils.set_random_seed(cfg.seed)
        keras.mixed_precision.set_global_policy("float32")
    else:
        set_determinism(cfg.seed, cfg.mixed_precision)
    model = build_cnn(spec, 4, name=name)
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_test_begin(self, logs=None):  # validation is not training
            seconds.append(time.perf_counter() - self.start)

        def on_epoch_end(self, epoch, logs=None):
            if len(seconds) <= epoch:
                seconds.append(time.perf_counter() - self.start)

    if config == "trainer":
        data = TrainData(x, y, x[:64], y[:64], ["a", "b", "c", "d"])
        fit(model, data, cfg, [Phase("bench", epochs, spec.learning_rate,
                                     random_shift=spec.random_shift)],
            extra_callbacks=[Timer()], log_to_mlflow=False)
    else:
        model.compile(optimizer=keras.optimizers.Adam(spec.learning_rate),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        model.fit(x.astype("float32"), tf.one_hot(y, 4).numpy(), batch_size=64, epochs=epochs,
                  shuffle=True, callbacks=[Timer()], verbose=0)
    steady = seconds[1:] or seconds
    return {"config": config, "images_per_second": round(images * len(steady) / sum(steady), 1),
            "flops_per_image": forward_flops(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg_bn")
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.only:
        print(json.dumps(run_one(args.only, args.model, args.images, args.epochs)))
        return
    rows = []
    for config in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--only", config, "--model", args.model,
                              "--images", str(args.images), "--epochs", str(args.epochs)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"error: {config} failed: {out.stderr.strip().splitlines()[-1]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    peak, how = cpu_peak_gflops()
    bare = next(r for r in rows if r["config"] == "bare")["images_per_second"]
    print(f"{args.model}: {rows[0]['flops_per_image'] / 1e6:.1f} MFLOPs forward per image; "
          f"CPU fp32 peak {peak:.0f} GFLOP/s ({how}); training counted as 3x forward")
    print(f"{'config':<12} {'img/s':>8} {'vs bare':>8} {'GFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        gflops = r["images_per_second"] * 3 * r["flops_per_image"] / 1e9
        print(f"{r['config']:<12} {r['images_per_second']:>8.1f} {r['images_per_second'] / bare:>8.2f} "
              f"{gflops:>8.1f} {gflops / peak:>8.1%}")


if __name__ == "__main__":
    main()
