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

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

__all__ = ["PairStatistics", "Stitch"]

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
    """Second-order statistics of a matched pair of maps ``(a, b)`` over all positions (float64).

    Positions are the batch and spatial axes (``B C_a H W [D]`` -> ``B*H*W*D``
    rows of ``C_a`` values). From these statistics the MSE of any stitch between
    the two maps, its gradient and the least-squares stitch follow exactly,
    without computing the stitched map: three ``C x N`` matrix products per pair
    instead of two stitched maps, their squared errors and their backward passes.

    Attributes:
        count: number of positions ``M``.
        sum_a: ``sum a`` (``C_a``); sum_b: ``sum b`` (``C_b``).
        gram_a: ``sum a a^T`` (``C_a x C_a``); gram_b: ``sum b b^T``.
        cross: ``sum a b^T`` (``C_a x C_b``).
    """

    count: int
    sum_a: Tensor
    sum_b: Tensor
    gram_a: Tensor
    gram_b: Tensor
    cross: Tensor

    @classmethod
    def of(cls, map_a: Tensor, map_b: Tensor) -> PairStatistics:
        """Statistics of ``map_a`` (``B C_a [spatial...]``) and ``map_b`` (``B C_b [spatial...]``), detached."""
        a, b = _positions(map_a), _positions(map_b)
        return cls(
            count=a.shape[0] * a.shape[2],
            sum_a=a.sum(dim=(0, 2)).double(),
            sum_b=b.sum(dim=(0, 2)).double(),
            gram_a=torch.bmm(a, a.mT).sum(0).double(),
            gram_b=torch.bmm(b, b.mT).sum(0).double(),
            cross=torch.bmm(a, b.mT).sum(0).double(),
        )

    def __add__(self, other: PairStatistics) -> PairStatistics:
        return PairStatistics(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def swapped(self) -> PairStatistics:
        """The statistics of ``(b, a)``."""
        return PairStatistics(self.count, self.sum_b, self.sum_a, self.gram_b, self.gram_a, self.cross.T)

    def stitch_mse(self, stitch: Stitch) -> Tensor:
        """``MSE(stitch(a), b)``, differentiable in the stitch's parameters.

        With ``stitch(a) = W a + c``: ``sum |W a + c - b|^2 = tr(W G_a W^T) + 2 c^T W s_a
        + M |c|^2 - 2 tr(W X) - 2 c^T s_b + tr(G_b)``, divided by ``M * C_b``.
        """
        weight, bias = (t.double() for t in stitch.affine())
        total = (
            ((weight @ self.gram_a) * weight).sum()
            + 2 * bias @ (weight @ self.sum_a)
            + self.count * bias @ bias
            - 2 * (weight * self.cross.T).sum()
            - 2 * bias @ self.sum_b
            + self.gram_b.trace()
        )
        return (total / (self.count * len(self.sum_b))).float()

    def least_squares(self, ridge: float = 1e-6) -> tuple[Tensor, Tensor]:
        """The stitch ``a -> b`` minimising the MSE: ``(weight C_b x C_a, bias C_b)`` in float32.

        ``ridge`` (relative to the mean of ``a``'s second moments) keeps the
        normal equations well posed when channels are constant or collinear.
        """
        channels = len(self.sum_a)
        normal = torch.zeros(channels + 1, channels + 1, dtype=torch.float64, device=self.gram_a.device)
        normal[:channels, :channels] = self.gram_a + torch.eye(channels, dtype=torch.float64, device=self.gram_a.device) * ridge * self.gram_a.diagonal().mean()
        normal[:channels, channels] = normal[channels, :channels] = self.sum_a
        normal[channels, channels] = self.count
        solution = torch.linalg.solve(normal, torch.cat([self.cross, self.sum_b[None]]))
        return solution[:channels].T.float(), solution[channels].float()


def _positions(x: Tensor) -> Tensor:
    """``B C [spatial...]`` -> ``B C N`` (detached, float32 for the matrix products)."""
    return x.detach().float().reshape(x.shape[0], x.shape[1], -1)
