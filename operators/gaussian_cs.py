"""Block-based Gaussian compressed sensing, the natural-image CS task of IDM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import ScaledAdjointOperator, check_image_size, check_ratio
from .registry import register_operator


def orthonormal_sensing_matrix(n: int, q: int, seed: int) -> torch.Tensor:
    """``Φ ∈ R^{n×q}`` with orthonormal columns: the first ``q`` left singular vectors of a
    seeded standard Gaussian ``n×n`` matrix (float64, computed on the CPU so every machine
    draws the same matrix)."""
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(n, n, generator=gen, dtype=torch.float64)
    u, _, _ = torch.linalg.svd(gaussian)
    return u[:, :q].contiguous()


def random_permutation(n: int, seed: int) -> torch.Tensor:
    """The seeded pixel permutation of block CS, ``(n,)`` int64 (CPU generator, so every
    machine draws the same one)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


@register_operator
class GaussianCS(ScaledAdjointOperator):
    """Block compressed sensing ``y_b = Φᵀ x_b`` on every ``block_size²`` block ``x_b``.

    ``Φ`` (``block_size² × q``, ``q = ceil(ratio · block_size²)``) has orthonormal columns,
    so ``A Aᵀ = I`` and ``A† = Aᵀ`` exactly. Blocks are the non-overlapping
    ``block_size × block_size`` tiles of each channel; with ``permute=True`` the pixels of
    each channel are first shuffled by a fixed seeded permutation (as in the IDM authors'
    training code), so a "block" is a random scatter of pixels.

    Shapes: image ``(B, C, H, W)`` → measurement ``(B, C, n_blocks, q)`` with
    ``n_blocks = H·W / block_size²``.

    Parameters: ``Φ`` is fixed by ``seed`` (an SVD, built once); the permutation is drawn
    from ``perm_seed`` (default ``seed + 1``) and replaced per step with
    ``update(perm_seed=...)`` or ``update(perm=...)`` (explicit permutations travel in the
    ``state_dict``; ``config["explicit_perm"]`` says so).
    """

    name = "gaussian_cs"

    def __init__(
        self,
        image_size: int | tuple[int, int],
        ratio: float,
        block_size: int = 32,
        seed: int = 0,
        permute: bool = False,
        channels: int = 1,
        perm_seed: int | None = None,
        explicit_perm: bool = False,
    ) -> None:
        super().__init__()
        h, w = check_image_size(image_size)
        ratio = check_ratio(ratio, "ratio")
        if block_size < 1 or h % block_size or w % block_size:
            raise ValueError(
                f"block_size must be a positive divisor of image_size {(h, w)}, got {block_size}"
            )
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        n = block_size * block_size
        q = math.ceil(ratio * n)
        self._config = dict(
            image_size=[h, w],
            ratio=ratio,
            block_size=int(block_size),
            seed=int(seed),
            permute=bool(permute),
            channels=int(channels),
        )
        self.block_size = block_size
        self.image_shape = (channels, h, w)
        self.n_blocks = h * w // n
        self.measurement_shape = (channels, self.n_blocks, q)
        self._phi64 = orthonormal_sensing_matrix(n, q, seed)  # exact master copy (CPU)
        self.register_buffer("phi", self._phi64.float())
        if permute:
            self._config.update(perm_seed=None, explicit_perm=False)
            self.register_buffer("perm", torch.arange(h * w))
            self.register_buffer("inv_perm", torch.arange(h * w))
            if explicit_perm:
                self._config["explicit_perm"] = True
                self._missing.add("perm")
            else:
                self.update(perm_seed=seed + 1 if perm_seed is None else perm_seed)
        else:
            self.perm = self.inv_perm = None

    def update(self, perm: torch.Tensor | None = None, perm_seed: int | None = None) -> GaussianCS:
        """Replace the pixel permutation (``permute=True`` only): an explicit ``(H·W,)``
        ``perm`` or a new ``perm_seed``; returns ``self``."""
        if perm is None and perm_seed is None:
            return self
        if self.perm is None:
            raise ValueError("update(perm=...) needs an operator built with permute=True")
        if perm is not None and perm_seed is not None:
            raise ValueError("give perm or perm_seed, not both")
        n = self.perm.numel()
        if perm is not None:
            perm = torch.as_tensor(perm).detach().long().cpu()
            if tuple(perm.shape) != (n,) or not torch.equal(perm.sort().values, torch.arange(n)):
                raise ValueError(f"perm must be a permutation of range({n})")
            self._config.update(explicit_perm=True)
        else:
            perm = random_permutation(n, perm_seed)
            self._config.update(perm_seed=int(perm_seed), explicit_perm=False)
        self.perm = perm.to(self.perm.device)
        self.inv_perm = torch.argsort(self.perm)
        self._missing.discard("perm")
        return self

    def resample(self, seed: int) -> GaussianCS:
        """A new pixel permutation from ``seed`` (``permute=True``; ``Φ`` is kept)."""
        return self if self.perm is None else self.update(perm_seed=seed)

    def _apply(self, fn, *args, **kwargs):
        # Casting the float32 buffer to float64 would keep float32's rounding (columns
        # orthonormal only to ~1e-7): a float64 operator takes the exact matrix instead.
        super()._apply(fn, *args, **kwargs)
        if self.phi.dtype == torch.float64:
            self.phi = self._phi64.to(self.phi.device)
        return self

    def _to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, n_blocks, block_size²)."""
        b, c, h, w = x.shape
        if self.perm is not None:
            return x.reshape(b, c, h * w)[..., self.perm].reshape(b, c, self.n_blocks, -1)
        s = self.block_size
        cols = F.unfold(x.reshape(b * c, 1, h, w), kernel_size=s, stride=s)  # (BC, s², nb)
        return cols.transpose(1, 2).reshape(b, c, self.n_blocks, s * s)

    def _from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_to_blocks`."""
        b, c = blocks.shape[:2]
        _, h, w = self.image_shape
        if self.perm is not None:
            return blocks.reshape(b, c, h * w)[..., self.inv_perm].reshape(b, c, h, w)
        s = self.block_size
        cols = blocks.reshape(b * c, self.n_blocks, s * s).transpose(1, 2)
        return F.fold(cols, output_size=(h, w), kernel_size=s, stride=s).reshape(b, c, h, w)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return self._to_blocks(x) @ self.phi.to(x.dtype)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return self._from_blocks(y @ self.phi.to(y.dtype).T)
