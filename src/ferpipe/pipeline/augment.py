"""Stage `augment`: seeded, materialised augmented copies of the training split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ferpipe.files import atomic_paths, load_split, write_npz_in_place
from ferpipe.pipeline.params import AugmentConfig


def augment_image(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random affine (rotation, shear, zoom, shift), flip and brightness change."""
    side = image.shape[0]
    angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    shear = rng.uniform(-cfg.shear, cfg.shear)
    zoom = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom, size=2)
    shift = rng.uniform(-cfg.shift, cfg.shift, size=2) * side
    flip = rng.random() < cfg.flip_prob
    factor = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear_m = np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]])
    # Maps output coordinates to input coordinates, around the image centre.
    matrix = rotate @ shear_m @ np.diag(1.0 / zoom)
    centre = np.array([(side - 1) / 2, (side - 1) / 2])
    offset = centre - matrix @ centre + shift
    out = ndimage.affine_transform(image.astype(np.float32), matrix, offset=offset,
                                   order=1, mode="nearest")
    if flip:
        out = out[:, ::-1]
    return np.clip(out * factor, 0, 255).round().astype(np.uint8)


def augment_split(x: np.ndarray, y: np.ndarray, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Originals first, then `copies` augmented versions of each, in a seeded order."""
    rng = np.random.default_rng(cfg.seed)
    copies = [augment_image(img, rng, cfg) for _ in range(cfg.copies) for img in x]
    x_out = np.concatenate([x, np.stack(copies)]) if copies else x
    return x_out, np.concatenate([y] * (cfg.copies + 1))


def save_preview(x: np.ndarray, cfg: AugmentConfig, path: Path) -> None:
    """Grid: each row an original, then four augmented versions of it, written to `path` as is
    (`augment` passes a temporary, moved into place with the data)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(cfg.seed + 1)
    rows = min(cfg.preview_images, len(x))
    picks = rng.choice(len(x), size=rows, replace=False)
    fig, axes = plt.subplots(rows, 5, figsize=(5 * 1.2, rows * 1.2), squeeze=False)
    for r, idx in enumerate(picks):
        images = [x[idx]] + [augment_image(x[idx], rng, cfg) for _ in range(4)]
        for c, img in enumerate(images):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
            axes[r, c].axis("off")
        axes[r, 0].set_title("original" if r == 0 else "", fontsize=7)
    fig.suptitle("augment: original | 4 augmented", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=80, metadata={"Software": None})
    finally:
        plt.close(fig)


def augment(cfg: AugmentConfig, prepared_dir: Path, out_dir: Path, preview_path: Path) -> dict:
    x, y, classes = load_split(prepared_dir, "train")
    x_aug, y_aug = augment_split(x, y, cfg)
    # Both or neither: a preview beside data from another run would show what was not trained on.
    with atomic_paths(out_dir / "train.npz", preview_path) as (data_tmp, preview_tmp):
        write_npz_in_place(data_tmp, {"x": x_aug, "y": y_aug, "classes": np.array(classes)})
        save_preview(x, cfg, preview_tmp)
    return {"train_images_in": int(len(x)), "train_images_out": int(len(x_aug))}
