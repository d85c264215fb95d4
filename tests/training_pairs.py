"""Seeded (HR, LR) training pairs for tests/test_training.py, in a module of their own that needs only numpy:
data worker processes (spawned) unpickle the dataset by importing this module, not the test module
(whose imports, torch's lpips among them, cost a spawned worker seconds)."""

from __future__ import annotations

import numpy as np


def _scene(seed: int, hr: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded piecewise-smooth 4-band HR patch (reflectance) and its 4x box-averaged LR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:hr, :hr] / hr
    img = np.empty((4, hr, hr), np.float32)
    base = rng.uniform(0.03, 0.3, 4)
    for b in range(4):
        img[b] = base[b] + 0.05 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(1, 3) * yy))
    for _ in range(3):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.3)
        img[:, (xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0.02, 0.4, 4)[:, None]
    lr = img.reshape(4, hr // 4, 4, hr // 4, 4).mean(axis=(2, 4))
    return img, lr


class _Pairs:
    def __init__(self, n: int, hr: int, first: int = 0) -> None:
        self.items = [_scene(first + i, hr) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]
