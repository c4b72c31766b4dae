"""Degradation augmentation: repeatable, off at 0, applied to every face at 1, pixels in range."""
import numpy as np


def batches(x, degrade, seed=3):
    from ferpipe.pipeline.train import make_dataset

    return [b[0].numpy() for b in make_dataset(x, np.zeros(len(x), np.int64), 4, 8, shuffle_seed=seed,
                                               degrade=degrade)]


def test_degradation_is_seeded_bounded_and_follows_its_probability():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 48, 48, 1), dtype=np.uint8)
    plain, again = batches(x, 0.0), batches(x, 0.0)
    degraded, repeat = batches(x, 1.0), batches(x, 1.0)
    assert all(np.array_equal(a, b) for a, b in zip(degraded, repeat))  # same seed, same pixels
    for clean, bad in zip(plain, degraded):
        assert bad.min() >= 0 and bad.max() <= 255
        assert all(not np.array_equal(c, d) for c, d in zip(clean, bad))  # every face changed at p=1
        # downscaled and blurred: less high-frequency energy than the noise-like original
        assert np.abs(np.diff(bad, axis=1)).mean() < np.abs(np.diff(clean, axis=1)).mean()
    assert all(np.array_equal(a, b) for a, b in zip(plain, again))
