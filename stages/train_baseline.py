"""Stage `train_baselines@<name>`: train one hand-built CNN declared under params `baselines`."""
import sys

from ferpipe.pipeline.config import load_entry, load_section, run_main
from ferpipe.pipeline.params import CNNSpec, TrainConfig


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    spec = load_entry("baselines", name, CNNSpec)
    cfg = load_section("train", TrainConfig)
    # Imported only now: TensorFlow takes ~10 s to load, and a params mistake is reported at once.
    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.train import Phase, run_training_stage

    def build(num_classes: int):
        model = build_cnn(spec, num_classes, name=name)
        return model, [Phase.for_spec("train", spec)]

    metrics = run_training_stage("train_baselines", name, spec, cfg, build)
    print(f"{name}: val_accuracy={metrics['val_accuracy']:.4f} params={metrics['params']} "
          f"wall={metrics['wall_seconds']}s img/s={metrics['train_images_per_second']}")


if __name__ == "__main__":
    run_main(main)
