"""Stitch-ensembles and plain two-model ensembles (DESIGN.md, step 5).

The stitch-ensemble at match ``k``: the stitch ``a_k -> b_k`` is applied and
averaged with B's own map at ``b_k``, the stitch ``b_k -> a_k`` likewise at
``a_k``; both networks then run to the end and their softmax outputs are
averaged. :func:`extract_stitch_ensemble` copies out only what that needs (both
parents and the two stitches of match ``k``) as a standalone module.

Both ensembles return ``log`` of the averaged softmax, ``B K H W [D]``. nnU-Net's
predictor treats a network's output as logits and applies a softmax, and
``softmax(log p) = p`` when ``p`` sums to one, so an ensemble runs through the
predictor like any nnU-Net model and yields exactly the averaged probabilities.

A saved ensemble is two files: ``<name>.pt``, the plain ``state_dict`` (loadable with
``torch.load(weights_only=True)``), and ``<name>.json``, its description (the parents' plans,
the match, the stitch shapes). The weights file is then exactly what a MONAI bundle's
``models/model.pt`` holds, so a bundle carries the file itself (the pipeline's bundles
hard-link it: the weights are stored once).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from stitch_ops.graph.matching import Match
from stitch_ops.graph.trace import trace_network
from stitch_ops.nnunet.model import load_plain
from stitch_ops.outputs import write_json
from stitch_ops.stitching.merge import merge_graphs, program
from stitch_ops.stitching.network import StitchedNetwork, atomic_save
from stitch_ops.stitching.parents import ParentSpec
from stitch_ops.stitching.stitch import Stitch
from stitch_ops.stitching.switch import Switch, SwitchMode

__all__ = [
    "StitchEnsemble",
    "StitchEnsembleDescription",
    "TwoModelEnsemble",
    "build_stitch_ensemble",
    "description_file",
    "extract_stitch_ensemble",
    "load_stitch_ensemble",
    "log_mean_softmax",
    "save_stitch_ensemble",
]

_FORMAT = "stitch_ops.stitch_ensemble/1"


def log_mean_softmax(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """``log((softmax(a) + softmax(b)) / 2)`` over the channel axis of ``B K [spatial...]`` logits, computed stably."""
    return torch.logaddexp(F.log_softmax(logits_a, dim=1), F.log_softmax(logits_b, dim=1)) - math.log(2.0)


class TwoModelEnsemble(nn.Module):
    """The plain ensemble ``a&b``: average of two networks' softmax, returned as its log."""

    def __init__(self, network_a: nn.Module, network_b: nn.Module):
        super().__init__()
        self.network_a, self.network_b = network_a, network_b

    def forward(self, x: Tensor) -> Tensor:
        """Images ``B C H W [D]`` -> log averaged probabilities ``B K H W [D]``."""
        return log_mean_softmax(self.network_a(x), self.network_b(x))


@dataclass(frozen=True, eq=False)
class StitchEnsembleDescription:
    """What is needed, besides the weights, to rebuild a stitch-ensemble.

    Attributes:
        parents: descriptions of A and B.
        probe_shape: the shape the parents were traced with (``B C H W [D]``).
        k: the match's place in the combined network's match list.
        match: the matched pair.
        stitch_a: ``(C_b, C_a, tensor_dims)`` of the stitch into A (at ``a_k``).
        stitch_b: ``(C_a, C_b, tensor_dims)`` of the stitch into B (at ``b_k``).
    """

    parents: tuple[ParentSpec, ParentSpec]
    probe_shape: tuple[int, ...]
    k: int
    match: Match
    stitch_a: tuple[int, int, int]
    stitch_b: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "parents": [spec.to_dict() for spec in self.parents],
            "probe_shape": list(self.probe_shape),
            "k": self.k,
            "match": asdict(self.match),
            "stitch_a": list(self.stitch_a),
            "stitch_b": list(self.stitch_b),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StitchEnsembleDescription:
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a stitch-ensemble description: expected format {_FORMAT!r}, got {data.get('format')!r}")
        spec_a, spec_b = (ParentSpec.from_dict(d) for d in data["parents"])
        return cls(
            parents=(spec_a, spec_b),
            probe_shape=tuple(data["probe_shape"]),
            k=int(data["k"]),
            match=Match(**data["match"]),
            stitch_a=tuple(data["stitch_a"]),
            stitch_b=tuple(data["stitch_b"]),
        )


class StitchEnsemble(nn.Module):
    """The stitch-ensemble at one match, as a standalone network.

    Args:
        parent_a: traced parent A (frozen here).
        parent_b: traced parent B.
        match: the pair ``(a_k, b_k)``.
        stitch_a: the stitch ``b_k -> a_k``.
        stitch_b: the stitch ``a_k -> b_k``.
        description: how to rebuild it; needed only by :func:`save_stitch_ensemble`.
    """

    def __init__(
        self,
        parent_a: fx.GraphModule,
        parent_b: fx.GraphModule,
        match: Match,
        stitch_a: Stitch,
        stitch_b: Stitch,
        description: StitchEnsembleDescription | None = None,
    ):
        super().__init__()
        self.parent_a = parent_a.eval().requires_grad_(False)
        self.parent_b = parent_b.eval().requires_grad_(False)
        self.switch_a, self.switch_b = Switch(stitch_a), Switch(stitch_b)
        self.switch_a.set_mode(SwitchMode.AVERAGE)
        self.switch_b.set_mode(SwitchMode.AVERAGE)
        self.match, self.description = match, description
        merged = merge_graphs(parent_a.graph, parent_b.graph, [match], lambda k: "switch_a", lambda k: "switch_b")
        self._program = program(self, merged, (merged.output_a, merged.output_b))

    def forward(self, x: Tensor) -> Tensor:
        """Images ``B C H W [D]`` -> log of the averaged probabilities ``B K H W [D]``."""
        logits_a, logits_b = self._program(x)
        return log_mean_softmax(logits_a, logits_b)

    def train(self, mode: bool = True) -> StitchEnsemble:
        """Like ``nn.Module.train``, but the parents' normalisation stays in eval mode."""
        super().train(mode)
        self.parent_a.eval()
        self.parent_b.eval()
        return self


def extract_stitch_ensemble(network: StitchedNetwork, k: int) -> StitchEnsemble:
    """The stitch-ensemble at match ``k`` of ``network``, with its own copies of the modules it needs."""
    if not 0 <= k < len(network.matches):
        raise IndexError(f"match k should be in [0, {len(network.matches)}), got {k}")
    stitch_a = copy.deepcopy(network.switches_a[k].stitch)
    stitch_b = copy.deepcopy(network.switches_b[k].stitch)
    description = None
    if network.parent_specs is not None:
        description = StitchEnsembleDescription(
            parents=network.parent_specs,
            probe_shape=network.graph_a.probe_shape,
            k=k,
            match=network.matches[k],
            stitch_a=(stitch_a.in_channels, stitch_a.out_channels, stitch_a.tensor_dims),
            stitch_b=(stitch_b.in_channels, stitch_b.out_channels, stitch_b.tensor_dims),
        )
    return StitchEnsemble(
        copy.deepcopy(network.parent_a),
        copy.deepcopy(network.parent_b),
        network.matches[k],
        stitch_a,
        stitch_b,
        description,
    )


def description_file(path: Path) -> Path:
    """Where :func:`save_stitch_ensemble` writes the description of the weights at ``path``."""
    return Path(path).with_suffix(".json")


def save_stitch_ensemble(ensemble: StitchEnsemble, path: Path) -> None:
    """Write the weights (a plain ``state_dict``) to ``path`` and the description beside it
    (:func:`description_file`); each file atomic.

    Raises:
        ValueError: if the ensemble has no description (its network was built without parent specs).
    """
    if ensemble.description is None:
        raise ValueError("saving needs the parents' descriptions: build the combined network with StitchedNetwork.from_parents")
    write_json(description_file(path), ensemble.description.to_dict())
    atomic_save({key: value.detach().cpu() for key, value in ensemble.state_dict().items()}, Path(path))


def load_stitch_ensemble(path: Path, trusted: bool = False) -> StitchEnsemble:
    """Rebuild a stitch-ensemble saved by :func:`save_stitch_ensemble` (on the CPU).

    Args:
        path: the saved weights (the description is read from :func:`description_file`).
        trusted: see :meth:`ParentSpec.build`.

    Raises:
        ValueError: if the files are not a stitch-ensemble or its stitches do not fit the parents.
    """
    path, described = Path(path), description_file(path)
    if not described.is_file():
        raise ValueError(f"{path} is not a saved stitch-ensemble: its description {described.name} is missing "
                         f"(save it again with save_stitch_ensemble)")
    try:
        description = StitchEnsembleDescription.from_dict(json.loads(described.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{described} is not a stitch-ensemble description ({err}); save it again") from None
    weights = load_plain(path)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path} is not a saved stitch-ensemble: expected a state_dict of tensors")
    ensemble = build_stitch_ensemble(description, trusted)
    ensemble.load_state_dict(weights)
    return ensemble


def build_stitch_ensemble(description: StitchEnsembleDescription, trusted: bool = False) -> StitchEnsemble:
    """A stitch-ensemble with the architecture ``description`` gives (random weights): the
    parents rebuilt from their plans and traced, the two stitches of the right shapes.

    Raises:
        ValueError: if the stitch shapes in the description do not fit the parents' matched maps.
    """
    graph_a, graph_b = (trace_network(spec.build(trusted), description.probe_shape) for spec in description.parents)
    match = description.match
    node_a, node_b = graph_a.node(match.node_a), graph_b.node(match.node_b)
    expected_a = (node_b.channels, node_a.channels, len(node_a.shape))
    expected_b = (node_a.channels, node_b.channels, len(node_b.shape))
    if (description.stitch_a, description.stitch_b) != (expected_a, expected_b):
        raise ValueError(
            f"stitch shapes {description.stitch_a}, {description.stitch_b} do not fit the parents' "
            f"matched maps, expected {expected_a}, {expected_b}"
        )
    return StitchEnsemble(graph_a.module, graph_b.module, match, Stitch(*expected_a), Stitch(*expected_b), description)
