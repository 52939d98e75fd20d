"""Synthetic phantoms: Shepp–Logan and seeded random ellipses, ``(N, N)`` float32 in [0, 1].

Phantoms are for tests and as extra training data, never as the only evaluation data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize


def _check_size(size: int) -> int:
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")
    return int(size)


def shepp_logan(size: int = 256) -> np.ndarray:
    """The (modified) Shepp–Logan phantom of scikit-image resized to ``(size, size)``.

    scikit-image ships it at 400×400 with values in [0, 1]; it is resized with
    anti-aliasing (area-like smoothing before bilinear sampling) and clipped to [0, 1].
    """
    size = _check_size(size)
    phantom = shepp_logan_phantom()
    if phantom.shape != (size, size):
        phantom = resize(phantom, (size, size), order=1, anti_aliasing=True, mode="reflect")
    return np.clip(phantom, 0.0, 1.0).astype(np.float32)


def random_ellipses(
    size: int = 256,
    seed: int | Sequence[int] = 0,
    *,
    n_ellipses: tuple[int, int] = (4, 12),
    supersample: int = 2,
) -> np.ndarray:
    """A random-ellipse phantom ``(size, size)`` in [0, 1], fully determined by ``seed``.

    A "body" ellipse (semi-axes 0.65–0.9 of the half field of view, intensity 0.4–0.8) holds
    ``n_ellipses`` (inclusive range) smaller ellipses (semi-axes 0.03–0.35, centred inside
    the body and cut to it) that add an intensity in [−0.35, 0.45]; the sum is clipped to
    [0, 1]. Each ellipse is the indicator ``((u/a)² + (v/b)² <= 1)`` of rotated
    coordinates ``(u, v)``; edges are anti-aliased by rendering ``supersample``× finer
    and averaging blocks.

    Args:
        size: image side ``N``.
        seed: ``np.random.default_rng`` seed (an int or a sequence of ints).
        n_ellipses: ``(min, max)`` number of inner ellipses.
        supersample: sub-pixels per pixel side (1: no anti-aliasing).
    """
    size = _check_size(size)
    lo, hi = n_ellipses
    if not 0 <= lo <= hi:
        raise ValueError(f"n_ellipses must be (min, max) with 0 <= min <= max, got {n_ellipses}")
    if int(supersample) != supersample or supersample < 1:
        raise ValueError(f"supersample must be a positive int, got {supersample!r}")
    rng = np.random.default_rng(seed)

    fine = size * supersample
    # Pixel centres of the fine grid in [-1, 1]; y points down the rows.
    t = (np.arange(fine) + 0.5) / fine * 2.0 - 1.0
    y, x = np.meshgrid(t, t, indexing="ij")

    def ellipse(cx: float, cy: float, a: float, b: float, theta: float) -> np.ndarray:
        cos, sin = np.cos(theta), np.sin(theta)
        u = (x - cx) * cos + (y - cy) * sin
        v = -(x - cx) * sin + (y - cy) * cos
        return ((u / a) ** 2 + (v / b) ** 2 <= 1.0).astype(np.float64)

    body = (
        rng.uniform(-0.05, 0.05, size=2),
        rng.uniform(0.65, 0.9, size=2),
        rng.uniform(0.0, np.pi),
    )
    body_mask = ellipse(*body[0], *body[1], body[2])
    image = rng.uniform(0.4, 0.8) * body_mask
    for _ in range(int(rng.integers(lo, hi + 1))):
        # Centre inside the body: a random point of the unit disc scaled by its semi-axes.
        radius, phi = 0.75 * np.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * np.pi)
        cos, sin = np.cos(body[2]), np.sin(body[2])
        u, v = radius * np.cos(phi) * body[1][0], radius * np.sin(phi) * body[1][1]
        cx, cy = body[0][0] + u * cos - v * sin, body[0][1] + u * sin + v * cos
        a, b = rng.uniform(0.03, 0.35, size=2)
        inner = ellipse(cx, cy, a, b, rng.uniform(0.0, np.pi))
        image += rng.uniform(-0.35, 0.45) * inner * body_mask  # structures stay inside

    image = image.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def random_ellipse_batch(
    count: int, size: int = 256, seed: int = 0, **kwargs: object
) -> torch.Tensor:
    """``count`` random-ellipse phantoms as a tensor ``(count, 1, size, size)``.

    Phantom ``i`` is ``random_ellipses(size, seed=(seed, i), **kwargs)``, so it does not
    depend on ``count`` (a longer batch extends a shorter one).
    """
    if int(count) != count or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    images = [random_ellipses(size, seed=(seed, i), **kwargs) for i in range(count)]
    return torch.from_numpy(np.stack(images))[:, None]
