"""Stage `transfer@<name>`: an ImageNet backbone declared under params `transfer`, two phases."""
import sys

from ferpipe.pipeline.config import load_entry, load_section, run_main
from ferpipe.pipeline.params import TrainConfig, TransferSpec, check_weights_file


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    spec = load_entry("transfer", name, TransferSpec)
    check_weights_file(spec, name)  # before MLflow and TensorFlow start: a missing file is one line now
    cfg = load_section("train", TrainConfig)
    # Imported only now: TensorFlow takes ~10 s to load, and a params mistake is reported at once.
    from ferpipe.pipeline.models import build_transfer, unfreeze_top
    from ferpipe.pipeline.train import Phase, run_training_stage

    def build(num_classes: int):
        model, backbone = build_transfer(spec, num_classes, name=name)
        phases = [Phase("head", spec.head_epochs, spec.head_learning_rate),
                  Phase("finetune", spec.finetune_epochs, spec.finetune_learning_rate,
                        before=lambda _: unfreeze_top(backbone, spec.finetune_layers))]
        return model, phases

    metrics = run_training_stage("transfer", name, spec, cfg, build)
    print(f"{name}: val_accuracy={metrics['val_accuracy']:.4f} params={metrics['params']} "
          f"wall={metrics['wall_seconds']}s img/s={metrics['train_images_per_second']}")


if __name__ == "__main__":
    run_main(main)
