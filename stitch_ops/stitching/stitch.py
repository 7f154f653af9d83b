"""The stitch: a learned linear map from one network's feature map to another's.

A stitch maps ``a_k`` (``B C_a [spatial...]``) to the space of ``b_k``
(``B C_b [spatial...]``) with a 1x1 convolution of the feature map's
dimensionality, or a linear layer for ``B C`` tensors. It mixes channels only,
so it can undo a permutation or rotation of the channels but cannot move
information across space.

Direct matching and least-squares initialisation both only need second-order
statistics of a matched pair of maps (:class:`PairStatistics`). Least-squares
initialisation solves the direct-matching problem in closed form on activations
of unlabeled data, as SN-Net initialises its stitching layers
(Pan et al., "Stitchable Neural Networks", CVPR 2023, ``init_stitch_weights_bias``
with the pseudo-inverse of the anchors' features); see also Csiszárik et al.,
"Similarity and Matching of Neural Network Representations", NeurIPS 2021.

Example::

    >>> stitch = Stitch(in_channels=8, out_channels=16, tensor_dims=4)
    >>> stitch(torch.zeros(2, 8, 32, 32)).shape
    torch.Size([2, 16, 32, 32])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["MomentSampler", "PairStatistics", "Stitch"]

_LAYERS = {2: nn.Linear, 3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


class Stitch(nn.Module):
    """1x1 convolution (or linear layer) from ``C_a`` to ``C_b`` channels.

    Args:
        in_channels: ``C_a``, channels of the source feature map.
        out_channels: ``C_b``, channels of the target feature map.
        tensor_dims: number of dimensions of the feature maps including batch and
            channel: 2 (``B C``), 3, 4 or 5 (``B C H W D``).
    """

    def __init__(self, in_channels: int, out_channels: int, tensor_dims: int):
        super().__init__()
        if tensor_dims not in _LAYERS:
            raise ValueError(f"tensor_dims should be one of {sorted(_LAYERS)} (B C [spatial...]), got {tensor_dims}")
        self.in_channels, self.out_channels, self.tensor_dims = in_channels, out_channels, tensor_dims
        layer = _LAYERS[tensor_dims]
        self.layer = layer(in_channels, out_channels) if tensor_dims == 2 else layer(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``B C_a [spatial...]`` -> ``B C_b [spatial...]``.

        While training, the 1x1 convolution runs as one batched matrix product:
        on the CPU, PyTorch's convolution falls back to a slow im2col kernel
        when gradients are needed, about twice as slow as ``baddbmm``.
        """
        if self.tensor_dims == 2 or not torch.is_grad_enabled():
            return self.layer(x)
        weight, bias = self.affine()
        batch, spatial = x.shape[0], x.shape[2:]
        flat = x.reshape(batch, self.in_channels, -1)
        out = torch.baddbmm(
            bias.view(1, -1, 1).expand(batch, -1, flat.shape[2]), weight.expand(batch, -1, -1), flat
        )
        return out.view(batch, self.out_channels, *spatial)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, tensor_dims={self.tensor_dims}"

    @torch.no_grad()
    def set_affine_(self, weight: Tensor, bias: Tensor) -> None:
        """Set the map to ``x -> weight @ x + bias`` per position; ``weight`` is ``C_b x C_a``."""
        expected = (self.out_channels, self.in_channels)
        if tuple(weight.shape) != expected or tuple(bias.shape) != (self.out_channels,):
            raise ValueError(
                f"expected weight {expected} and bias ({self.out_channels},), "
                f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        self.layer.weight.copy_(weight.reshape(self.layer.weight.shape))
        self.layer.bias.copy_(bias)

    def affine(self) -> tuple[Tensor, Tensor]:
        """The map as ``(weight C_b x C_a, bias C_b)``, views of the parameters (gradients flow)."""
        return self.layer.weight.reshape(self.out_channels, self.in_channels), self.layer.bias

    def set_identity_(self) -> None:
        """Make the stitch the identity map (needs ``C_a == C_b``)."""
        if self.in_channels != self.out_channels:
            raise ValueError(f"an identity stitch needs C_a == C_b, got {self.in_channels} -> {self.out_channels}")
        device = self.layer.weight.device
        self.set_affine_(torch.eye(self.in_channels, device=device), torch.zeros(self.out_channels, device=device))


@dataclass(frozen=True)
class PairStatistics:
    """Second moments of a matched pair of maps ``(a, b)`` over all positions, in float64.

    Positions are the batch and spatial axes (``B C_a H W [D]`` gives ``B*H*W*D``
    vectors of ``C_a`` values). With ``a' = [a; 1]`` and ``b' = [b; 1]`` the
    statistics are ``sum a' a'^T``, ``sum b' b'^T`` and ``sum a' b'^T``. From them
    the MSE of any stitch between the two maps, its gradient and the
    least-squares stitch follow exactly, without computing a stitched map: three
    ``C x N`` matrix products per pair instead of two stitched maps, their
    squared errors and their backward passes.

    Attributes:
        moments_a: ``sum a' a'^T`` (``C_a+1 x C_a+1``; the last entry counts the positions).
        moments_b: ``sum b' b'^T`` (``C_b+1 x C_b+1``).
        cross: ``sum a' b'^T`` (``C_a+1 x C_b+1``).
    """

    moments_a: Tensor
    moments_b: Tensor
    cross: Tensor

    @classmethod
    def of(cls, map_a: Tensor, map_b: Tensor, sampler: MomentSampler | None = None) -> PairStatistics:
        """Statistics of ``map_a`` (``B C_a [spatial...]``) and ``map_b`` (``B C_b [spatial...]``), detached.

        With a ``sampler``, an unbiased estimate from a random subset of the positions
        (see :class:`MomentSampler`); without, the exact sums over all positions.
        """
        if sampler is not None and sampler.fraction < 1:
            return cls._estimate(map_a, map_b, sampler)
        a, b = _positions(map_a), _positions(map_b)
        count = a.shape[0] * a.shape[2]
        sum_a, sum_b = a.sum(dim=(0, 2)), b.sum(dim=(0, 2))
        return cls(
            moments_a=_augmented(torch.bmm(a, a.mT).sum(0), sum_a, sum_a, count),
            moments_b=_augmented(torch.bmm(b, b.mT).sum(0), sum_b, sum_b, count),
            cross=_augmented(torch.bmm(a, b.mT).sum(0), sum_a, sum_b, count),
        )

    @classmethod
    def _estimate(cls, map_a: Tensor, map_b: Tensor, sampler: MomentSampler) -> PairStatistics:
        """The sums over a uniform random subset of ``n`` of the ``P`` positions, scaled by ``P / n``.

        Each position is in the subset with probability ``n / P``, so every scaled sum has the
        full sum as its expectation (the count becomes ``n * P / n = P``).
        """
        a, b = _positions(map_a), _positions(map_b)
        batch, per_sample = a.shape[0], a.shape[2]
        chosen = sampler.positions(batch, per_sample, a.device)
        count = sum(len(index) for index in chosen)
        ones = a.new_ones(1, count)
        # [subset; 1] (C+1 x n): one product per statistic gives the moments, the sums and the count
        subset_a = torch.cat([torch.cat([a[i].index_select(1, index) for i, index in enumerate(chosen)], dim=1), ones])
        subset_b = torch.cat([torch.cat([b[i].index_select(1, index) for i, index in enumerate(chosen)], dim=1), ones])
        scale = batch * per_sample / count
        return cls(
            moments_a=(subset_a @ subset_a.T).double() * scale,
            moments_b=(subset_b @ subset_b.T).double() * scale,
            cross=(subset_a @ subset_b.T).double() * scale,
        )

    def __add__(self, other: PairStatistics) -> PairStatistics:
        return PairStatistics(self.moments_a + other.moments_a, self.moments_b + other.moments_b, self.cross + other.cross)

    def swapped(self) -> PairStatistics:
        """The statistics of ``(b, a)``."""
        return PairStatistics(self.moments_b, self.moments_a, self.cross.T)

    def stitch_mse(self, stitch: Stitch) -> Tensor:
        """``MSE(stitch(a), b)``, differentiable in the stitch's parameters.

        With ``W' = [W c]`` (so ``stitch(a) = W' a'``):
        ``sum |W' a' - b|^2 = tr(W' (sum a' a'^T) W'^T) - 2 tr(W' sum a' b^T) + sum |b|^2``,
        divided by the number of values, ``positions * C_b``.
        """
        weight, bias = stitch.affine()
        augmented = torch.cat([weight, bias[:, None]], dim=1).double()
        cross = self.cross[:, :-1]
        total = ((augmented @ self.moments_a) * augmented).sum() - 2 * (augmented * cross.T).sum() + self.moments_b.diagonal()[:-1].sum()
        return (total / (self.moments_a[-1, -1] * cross.shape[1])).float()

    @torch.no_grad()
    def stitch_mse_gradient(self, stitch: Stitch) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`stitch_mse` and its gradient in closed form, without autograd.

        With ``M = sum a' a'^T`` and ``X = sum a' b^T``, ``d/dW' sum |W' a' - b|^2 = 2 (W' M - X^T)``.
        Direct matching steps with this: about half the cost of building and
        back-propagating :meth:`stitch_mse`'s graph for every stitch.

        Returns:
            the MSE (float32 scalar), the gradient for the weight (``C_b x C_a``) and for the bias (``C_b``), float32.
        """
        weight, bias = stitch.affine()
        augmented = torch.cat([weight, bias[:, None]], dim=1).double()
        cross = self.cross[:, :-1].T  # C_b x C_a+1
        denominator = self.moments_a[-1, -1] * cross.shape[0]
        product = augmented @ self.moments_a
        total = ((product - 2 * cross) * augmented).sum() + self.moments_b.diagonal()[:-1].sum()
        gradient = (2 / denominator) * (product - cross)
        return (total / denominator).float(), gradient[:, :-1].float(), gradient[:, -1].float()

    def least_squares(self, ridge: float = 1e-6) -> tuple[Tensor, Tensor]:
        """The stitch ``a -> b`` minimising the MSE: ``(weight C_b x C_a, bias C_b)`` in float32.

        ``ridge`` (relative to the mean second moment of ``a``'s channels) keeps
        the normal equations well posed when channels are constant or collinear.
        """
        channels = len(self.moments_a) - 1
        regulariser = torch.zeros_like(self.moments_a)
        regulariser.diagonal()[:channels] = ridge * self.moments_a.diagonal()[:channels].mean()
        solution = torch.linalg.solve(self.moments_a + regulariser, self.cross[:, :-1])  # W'^T
        return solution[:channels].T.float(), solution[channels].float()


@dataclass
class MomentSampler:
    """Which positions direct matching estimates a pair's moments from, drawn anew every step.

    Direct matching needs, per match, three ``C x P`` matrix products over all ``P``
    positions (batch x spatial) of the pair's maps; in 2-D these cost about as much as
    the parents' forward passes. An unbiased estimate from a subset is as good for
    stochastic gradient descent (the gradient is linear in the moments): every step,
    ``ceil(fraction * P)`` positions are drawn uniformly without replacement, and the sums
    over them are scaled by ``P / n``. The subset is drawn once per step for each map size
    ``(B, P)`` and shared by every match of that size (each match's estimate stays
    unbiased); :meth:`new_step` forgets it.

    Args:
        fraction: share of the positions used, in ``(0, 1]``; 1 means every position (exact).
        generator: the only source of randomness, so a seeded run draws the same subsets.

    Example::

        >>> sampler = MomentSampler(0.25, torch.Generator().manual_seed(0))
        >>> [len(i) for i in sampler.positions(batch=2, per_sample=8, device=torch.device("cpu"))]  # 4 of 16
        [1, 3]
    """

    fraction: float
    generator: torch.Generator
    _drawn: dict[tuple[int, int], list[Tensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not 0 < self.fraction <= 1:
            raise ValueError(f"the moment sample fraction should be in (0, 1] (1: every position), got {self.fraction!r}")

    def new_step(self) -> None:
        """Draw new subsets from the next call on."""
        self._drawn.clear()

    def positions(self, batch: int, per_sample: int, device: torch.device) -> list[Tensor]:
        """The chosen positions of a ``batch x per_sample`` map, per sample (sorted indices into ``per_sample``)."""
        key = (batch, per_sample)
        if key not in self._drawn:
            total = batch * per_sample
            count = min(total, max(1, math.ceil(self.fraction * total)))
            flat = torch.randperm(total, generator=self.generator)[:count].sort().values
            bounds = torch.searchsorted(flat, torch.arange(1, batch) * per_sample).tolist()
            self._drawn[key] = [(part - i * per_sample).to(device) for i, part in enumerate(flat.tensor_split(bounds))]
        return self._drawn[key]


def _augmented(products: Tensor, row_sums: Tensor, column_sums: Tensor, count: int) -> Tensor:
    """``[[products, row_sums], [column_sums^T, count]]`` in float64 (``count`` exact beyond 2^24)."""
    top = torch.cat([products.double(), row_sums.double()[:, None]], dim=1)
    bottom = torch.cat([column_sums.double(), column_sums.new_tensor([count], dtype=torch.float64)])[None]
    return torch.cat([top, bottom])


def _positions(x: Tensor) -> Tensor:
    """``B C [spatial...]`` -> ``B C N`` (detached, float32 for the matrix products)."""
    return x.detach().float().reshape(x.shape[0], x.shape[1], -1)
