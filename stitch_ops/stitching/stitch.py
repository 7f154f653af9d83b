"""The stitch: a learned linear map from one network's feature map to another's.

A stitch maps ``a_k`` (``B C_a [spatial...]``) to the space of ``b_k``
(``B C_b [spatial...]``) with a 1x1 convolution of the feature map's
dimensionality, or a linear layer for ``B C`` tensors. It mixes channels only,
so it can undo a permutation or rotation of the channels but cannot move
information across space.

Least-squares initialisation solves the direct-matching problem in closed form
on activations of unlabeled data, as SN-Net initialises its stitching layers
(Pan et al., "Stitchable Neural Networks", CVPR 2023, ``init_stitch_weights_bias``
with the pseudo-inverse of the anchors' features); see also Csiszárik et al.,
"Similarity and Matching of Neural Network Representations", NeurIPS 2021.

Example::

    >>> stitch = Stitch(in_channels=8, out_channels=16, tensor_dims=4)
    >>> stitch(torch.zeros(2, 8, 32, 32)).shape
    torch.Size([2, 16, 32, 32])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LeastSquaresFit", "Stitch"]

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
        """``B C_a [spatial...]`` -> ``B C_b [spatial...]``."""
        return self.layer(x)

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

    def set_identity_(self) -> None:
        """Make the stitch the identity map (needs ``C_a == C_b``)."""
        if self.in_channels != self.out_channels:
            raise ValueError(f"an identity stitch needs C_a == C_b, got {self.in_channels} -> {self.out_channels}")
        device = self.layer.weight.device
        self.set_affine_(torch.eye(self.in_channels, device=device), torch.zeros(self.out_channels, device=device))


class LeastSquaresFit:
    """Streaming least-squares solution of ``target ~ weight @ source + bias``.

    Accumulates ``[x 1]^T [x 1]`` and ``[x 1]^T y`` over batches (in float64), so
    many batches can be used without holding their activations.

    Args:
        in_channels: ``C_a``.
        out_channels: ``C_b``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        self.gram = torch.zeros(in_channels + 1, in_channels + 1, dtype=torch.float64)
        self.cross = torch.zeros(in_channels + 1, out_channels, dtype=torch.float64)

    def update(self, source: Tensor, target: Tensor) -> None:
        """Add one batch: ``source`` is ``B C_a [spatial...]``, ``target`` is ``B C_b [spatial...]``."""
        x = _positions(source)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        y = _positions(target)
        self.gram += (x.T @ x).cpu()
        self.cross += (x.T @ y).cpu()

    def solve(self, ridge: float = 1e-6) -> tuple[Tensor, Tensor]:
        """``(weight C_b x C_a, bias C_b)``; ``ridge`` (relative to the mean variance) keeps it well posed."""
        if self.gram[-1, -1] == 0:
            raise ValueError("no data: call update() with at least one batch before solve()")
        regulariser = torch.eye(len(self.gram), dtype=torch.float64) * ridge * self.gram.diagonal()[:-1].mean()
        regulariser[-1, -1] = 0.0
        solution = torch.linalg.solve(self.gram + regulariser, self.cross)
        return solution[:-1].T.float(), solution[-1].float()


def _positions(x: Tensor) -> Tensor:
    """``B C [spatial...]`` -> ``(B * positions) x C`` in float64."""
    return x.detach().movedim(1, -1).reshape(-1, x.shape[1]).double()
