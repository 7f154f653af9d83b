"""The combined network: two frozen parents, a stitch in each direction per match, switches.

(DESIGN.md, "The method in one page", step 3.) :class:`StitchedNetwork` holds
both parents (frozen: ``requires_grad=False``, normalisation always in eval
mode), and for every match ``k`` a switch at ``a_k`` (owning the stitch
``b_k -> a_k``) and a switch at ``b_k`` (owning ``a_k -> b_k``). What each switch
passes on and whose output is returned is a :class:`SwitchConfiguration`, set
at run time with :meth:`StitchedNetwork.configure`; the parents are not rebuilt. With
every switch on ``original`` the network returns exactly the chosen parent's
output. The forward pass runs only what the configured output needs: a switch on
``original`` is a wire, so the other parent runs only as far as the last active
stitch into the output parent's side reads it (none: not at all).

Example::

    >>> network = StitchedNetwork.from_networks(net_a, net_b, probe_shape=(2, 1, 64, 64))
    >>> network.configure(SwitchConfiguration.all_original(len(network.matches), Parent.B))
    >>> torch.equal(network(x), net_b(x))
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, fx, nn

from stitch_ops.approaches import StitchMethod
from stitch_ops.errors import InputFileError, reading
from stitch_ops.graph.matching import Match, MatchingConfig, match_networks
from stitch_ops.graph.trace import NetworkGraph, trace_network
from stitch_ops.outputs import output_file
from stitch_ops.stitching.merge import bypass_switches, merge_graphs, parent_maps, program
from stitch_ops.stitching.parents import ParentSpec, probe_shape
from stitch_ops.stitching.stitch import MomentSampler, PairStatistics, Stitch
from stitch_ops.stitching.switch import DEFAULT_LOSS_TERMS, LossTerm, Switch, SwitchMode

__all__ = [
    "PairLosses",
    "PairMoments",
    "Parent",
    "StitchedNetwork",
    "SwitchConfiguration",
    "StitchMethod",
    "load_stitched_network",
    "sample_configuration",
    "save_stitched_network",
]

_FORMAT = "stitch_ops.stitched_network/2"
"""Version 2 saves the stitches without the parents' weights (version 1 embedded them)."""


class Parent(StrEnum):
    """One of the two networks of a combined network."""

    A = "a"
    B = "b"


@dataclass(frozen=True)
class SwitchConfiguration:
    """What every switch passes on, and whose output the combined network returns.

    Attributes:
        switches_a: mode of the switch at ``a_k`` for each match k (stitch ``b_k -> a_k``).
        switches_b: mode of the switch at ``b_k`` (stitch ``a_k -> b_k``).
        output: the parent whose output is returned.
    """

    switches_a: tuple[SwitchMode, ...]
    switches_b: tuple[SwitchMode, ...]
    output: Parent = Parent.A

    def __post_init__(self) -> None:
        if len(self.switches_a) != len(self.switches_b):
            raise ValueError(f"one switch per match on each side: got {len(self.switches_a)} for A, {len(self.switches_b)} for B")
        object.__setattr__(self, "switches_a", tuple(SwitchMode(m) for m in self.switches_a))
        object.__setattr__(self, "switches_b", tuple(SwitchMode(m) for m in self.switches_b))
        object.__setattr__(self, "output", Parent(self.output))

    @classmethod
    def all_original(cls, num_matches: int, output: Parent | str = Parent.A) -> SwitchConfiguration:
        """Every switch passes its own network's map: the combined network is parent ``output``."""
        return cls((SwitchMode.ORIGINAL,) * num_matches, (SwitchMode.ORIGINAL,) * num_matches, Parent(output))

    @property
    def active_stitches(self) -> int:
        """Number of switches not on ``original``."""
        return sum(mode is not SwitchMode.ORIGINAL for mode in self.switches_a + self.switches_b)


def sample_configuration(num_matches: int, active_stitches: int, generator: torch.Generator) -> SwitchConfiguration:
    """A random network with ``active_stitches`` switches on ``stitched`` (RQ1).

    The active switches are drawn uniformly among the ``2 * num_matches`` switches,
    and the output parent uniformly among A and B.
    """
    if not 0 <= active_stitches <= 2 * num_matches:
        raise ValueError(f"active_stitches should be in [0, {2 * num_matches}] for {num_matches} matches, got {active_stitches}")
    chosen = set(torch.randperm(2 * num_matches, generator=generator)[:active_stitches].tolist())
    modes = [SwitchMode.STITCHED if i in chosen else SwitchMode.ORIGINAL for i in range(2 * num_matches)]
    output = Parent.A if torch.randint(2, (1,), generator=generator).item() == 0 else Parent.B
    return SwitchConfiguration(tuple(modes[:num_matches]), tuple(modes[num_matches:]), output)


class PairLosses(NamedTuple):
    """Training losses of the two switches of one match (scalars)."""

    a: Tensor
    b: Tensor


class PairMoments(nn.Module):
    """Computes a matched pair's :class:`PairStatistics` inside the combined network's program:
    exactly, or estimated from the positions its ``sampler`` draws (direct-matching training)."""

    def __init__(self):
        super().__init__()
        self.sampler: MomentSampler | None = None

    def forward(self, map_a: Tensor, map_b: Tensor) -> PairStatistics:
        return PairStatistics.of(map_a, map_b, self.sampler)


class StitchedNetwork(nn.Module):
    """Two frozen parents joined by stitches and switches at every match.

    Args:
        graph_a: parent A, traced (its module becomes ``parent_a``).
        graph_b: parent B, traced with the same spatial probe shape.
        matches: strictly increasing in both topological orders (as
            :func:`~stitch_ops.graph.matching.match_networks` returns them).
        parent_specs: descriptions of A and B, needed only to save the network.
        init_seed: seeds the stitches' initial weights (the global RNG is left alone),
            so building the same combined network twice gives the same stitches.

    Raises:
        ValueError: if a match pairs nodes that are not feature maps of the same
            downsampling and dimensionality, or the matches are not increasing.
    """

    def __init__(
        self,
        graph_a: NetworkGraph,
        graph_b: NetworkGraph,
        matches: Sequence[Match],
        parent_specs: tuple[ParentSpec, ParentSpec] | None = None,
        init_seed: int = 0,
    ):
        super().__init__()
        self.graph_a, self.graph_b = graph_a, graph_b
        self.matches = tuple(matches)
        self.parent_specs = parent_specs
        self.parent_a = _frozen(graph_a.module)
        self.parent_b = _frozen(graph_b.module)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.switches_a = nn.ModuleList(Switch(_stitch(graph_b, graph_a, m.node_b, m.node_a)) for m in self.matches)
            self.switches_b = nn.ModuleList(Switch(_stitch(graph_a, graph_b, m.node_a, m.node_b)) for m in self.matches)
        self.moments = PairMoments()
        self.switches_a.to(_device(graph_a.module))
        self.switches_b.to(_device(graph_a.module))
        self._programs = {
            "statistics": self._program(lambda merged: merged.statistics),
            "double_batched": self._program(lambda merged: tuple(zip(merged.losses_a, merged.losses_b)),
                                            references=True),
            "maps": self._program(lambda merged: tuple(zip(merged.maps_a, merged.maps_b))),
            "references": self._program(lambda merged: tuple(zip(merged.maps_a, merged.maps_b)), switches=False),
        }
        self.configuration = SwitchConfiguration.all_original(len(self.matches))
        self._forward: tuple[SwitchConfiguration, fx.GraphModule] | None = None
        self.training_method: StitchMethod | None = None

    @classmethod
    def from_networks(
        cls,
        network_a: nn.Module,
        network_b: nn.Module,
        probe: Sequence[int],
        matching: MatchingConfig = MatchingConfig(),
        parent_specs: tuple[ParentSpec, ParentSpec] | None = None,
    ) -> StitchedNetwork:
        """Trace both networks with a probe of shape ``B C H W [D]``, match them and combine them."""
        graph_a, graph_b = trace_network(network_a, probe), trace_network(network_b, probe)
        return cls(graph_a, graph_b, match_networks(graph_a, graph_b, matching), parent_specs)

    @classmethod
    def from_parents(
        cls,
        spec_a: ParentSpec,
        network_a: nn.Module,
        spec_b: ParentSpec,
        network_b: nn.Module,
        matching: MatchingConfig = MatchingConfig(),
    ) -> StitchedNetwork:
        """Combine two nnU-Net networks described by their plans (the probe is chosen from their strides)."""
        return cls.from_networks(network_a, network_b, probe_shape(spec_a, spec_b), matching, (spec_a, spec_b))

    @classmethod
    def from_models(cls, model_a, model_b, matching: MatchingConfig = MatchingConfig()) -> StitchedNetwork:
        """Combine two loaded nnU-Net models (``stitch_ops.nnunet.model.NnUNetModel``: network, plans, dataset.json)."""
        return cls.from_parents(ParentSpec.of_model(model_a), model_a.network, ParentSpec.of_model(model_b), model_b.network, matching)

    def configure(self, configuration: SwitchConfiguration, generator: torch.Generator | None = None) -> None:
        """Set every switch and the output; ``generator`` drives switches on ``random``.

        Raises:
            ValueError: if the configuration has a different number of matches, or uses
                ``random`` without a generator.
        """
        if len(configuration.switches_a) != len(self.matches):
            raise ValueError(f"expected a configuration for {len(self.matches)} matches, got {len(configuration.switches_a)}")
        for switch, mode in zip(self.switches_a, configuration.switches_a):
            switch.set_mode(mode, generator)
        for switch, mode in zip(self.switches_b, configuration.switches_b):
            switch.set_mode(mode, generator)
        self.configuration = configuration

    def set_training(self, method: StitchMethod | str | None, loss_terms: tuple[LossTerm, ...] = DEFAULT_LOSS_TERMS) -> None:
        """Prepare :meth:`switch_losses` for ``method`` (``loss_terms``: double-batched only); ``None``: inference."""
        self.training_method = None if method is None else StitchMethod(method)
        double_batched = self.training_method is StitchMethod.DOUBLE_BATCHED
        for switch in self.switches():
            switch.set_double_batched(loss_terms if double_batched else None)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``B K H W [D]`` of the configured output parent for images ``B C H W [D]``.

        Runs the configuration's own program (built at the first call after :meth:`configure`):
        switches on ``original`` are wires, so layers whose maps only they would read (the other
        parent past the last stitch into the output parent's side) are not computed; the output
        is the same as running every switch.
        """
        if self._forward is None or self._forward[0] is not self.configuration:
            self._forward = (self.configuration, self._configured_program(self.configuration))
        return self._forward[1](x)

    def switch_losses(self, x: Tensor) -> tuple[PairLosses, ...]:
        """Per match, the losses of the stitches into A and into B, for the method set by :meth:`set_training`.

        Direct matching: ``MSE(stitch(b_k), a_k)`` and ``MSE(stitch(a_k), b_k)`` with every
        switch on original; the parents run without autograd and the MSEs follow
        from each pair's exact :class:`PairStatistics` (training steps use
        :meth:`direct_matching_gradients`). Double-batched: each switch's loss for images ``x``
        put in the batch twice (:mod:`stitch_ops.stitching.switch`), ``x`` given once: the
        reference copy is the parents' own forward pass, run here without autograd (nothing in
        it depends on a stitch), and the switches compute their losses on the forwarded copy
        against it.

        Raises:
            RuntimeError: if no training method is set.
        """
        if self.training_method is None:
            raise RuntimeError("switch losses need a training method: call set_training(StitchMethod...) first")
        if self.training_method is StitchMethod.DOUBLE_BATCHED:
            with torch.no_grad():
                references = self._programs["references"](x)
            return tuple(PairLosses(a, b) for a, b in self._programs["double_batched"](x, references))
        return tuple(
            PairLosses(statistics.swapped().stitch_mse(switch_a.stitch), statistics.stitch_mse(switch_b.stitch))
            for statistics, switch_a, switch_b in zip(self.pair_statistics(x), self.switches_a, self.switches_b)
        )

    @torch.no_grad()
    def direct_matching_gradients(self, x: Tensor, sampler: MomentSampler | None = None) -> Tensor:
        """Set every stitch's ``.grad`` to the gradient of its direct-matching loss; return the summed loss.

        The same losses as :meth:`switch_losses` for direct matching, differentiated in closed
        form (:meth:`PairStatistics.stitch_mse_gradient`) instead of by autograd: the step's
        backward pass would be 80 tiny graphs, half the cost of the losses themselves.
        """
        if self.training_method is not StitchMethod.DIRECT_MATCHING:
            raise RuntimeError("direct_matching_gradients needs set_training(StitchMethod.DIRECT_MATCHING) first")
        losses = []
        for statistics, switch_a, switch_b in zip(self.pair_statistics(x, sampler), self.switches_a, self.switches_b):
            for pair, stitch in ((statistics.swapped(), switch_a.stitch), (statistics, switch_b.stitch)):
                loss, weight, bias = pair.stitch_mse_gradient(stitch)
                stitch.layer.weight.grad = weight.view_as(stitch.layer.weight)
                stitch.layer.bias.grad = bias
                losses.append(loss)
        return torch.stack(losses).sum()

    @torch.no_grad()
    def pair_statistics(self, x: Tensor, sampler: MomentSampler | None = None) -> tuple[PairStatistics, ...]:
        """Second-order statistics of ``(a_k, b_k)`` for every match, from the parents' own maps:
        exact, or (with a ``sampler``) estimated from a new random subset of positions."""
        self._check_parents_unstitched("pair_statistics")
        if sampler is None:
            return self._programs["statistics"](x)
        sampler.new_step()
        self.moments.sampler = sampler
        try:
            return self._programs["statistics"](x)
        finally:
            self.moments.sampler = None

    def matched_maps(self, x: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        """``(a_k, b_k)`` for every match, as the parents compute them (switches on original)."""
        self._check_parents_unstitched("matched_maps")
        return self._programs["maps"](x)

    def switches(self) -> Iterator[Switch]:
        """Every switch: those at ``a_0 .. a_n``, then those at ``b_0 .. b_n``."""
        yield from self.switches_a
        yield from self.switches_b

    def stitch_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters: those of the stitches."""
        for switch in self.switches():
            yield from switch.stitch.parameters()

    def train(self, mode: bool = True) -> StitchedNetwork:
        """Like ``nn.Module.train`` but the parents stay in eval mode (frozen normalisation statistics)."""
        super().train(mode)
        self.parent_a.eval()
        self.parent_b.eval()
        return self

    def _configured_program(self, configuration: SwitchConfiguration) -> fx.GraphModule:
        output = {Parent.A: lambda merged: merged.output_a, Parent.B: lambda merged: merged.output_b}
        return self._program(output[configuration.output], wires=configuration)

    def _check_parents_unstitched(self, caller: str) -> None:
        if self.configuration.active_stitches or self.training_method is StitchMethod.DOUBLE_BATCHED:
            raise RuntimeError(
                f"{caller} reads the parents' own maps: configure every switch to original "
                f"(got {self.configuration.active_stitches} active) and leave double-batched training"
            )

    def _program(self, outputs, references: bool = False, switches: bool = True,
                 wires: SwitchConfiguration | None = None) -> fx.GraphModule:
        """A program of the merged parents returning ``outputs(merged)``; ``references``: switches
        take the parents' own maps too (double-batched); ``switches=False``: the parents alone;
        ``wires``: the switches this configuration sets to ``original`` become wires."""
        graph_a, graph_b = self.graph_a.module.graph, self.graph_b.module.graph
        if not switches:
            merged = parent_maps(graph_a, graph_b, self.matches)
            return program(self, merged, outputs(merged))
        merged = merge_graphs(
            graph_a,
            graph_b,
            self.matches,
            switch_a=lambda k: f"switches_a.{k}",
            switch_b=lambda k: f"switches_b.{k}",
            moments="moments",
            references=references,
        )
        if wires is not None:
            merged = bypass_switches(merged, [call for call, mode in zip(merged.switches_a + merged.switches_b,
                                                                  wires.switches_a + wires.switches_b)
                                     if mode is SwitchMode.ORIGINAL])
        return program(self, merged, outputs(merged))


def save_stitched_network(network: StitchedNetwork, path: Path) -> None:
    """Save the stitches, the description to rebuild the network and a fingerprint of each
    parent's weights, loadable with ``weights_only=True``.

    The parents' weights are not saved: whoever trained the stitches has the parents already
    (in the pipeline they are DVC outputs), and storing them again in every stitch training
    cost 62 of a polyp network's 87 MB. :func:`load_stitched_network` takes them back and
    refuses parents whose weights differ from those the stitches were trained between.

    Raises:
        ValueError: if the network was built without parent descriptions.
    """
    if network.parent_specs is None:
        raise ValueError("saving needs the parents' descriptions: build the network with StitchedNetwork.from_parents")
    description = {
        "format": _FORMAT,
        "parents": [spec.to_dict() for spec in network.parent_specs],
        "parent_weights": [_fingerprint(network.parent_a), _fingerprint(network.parent_b)],
        "matches": [asdict(m) for m in network.matches],
    }
    stitches = {f"switches_{side}.{key}": value
                for side, switches in (("a", network.switches_a), ("b", network.switches_b))
                for key, value in _cpu_state(switches).items()}
    atomic_save({"description": json.dumps(description), "state_dict": stitches}, Path(path))


def load_stitched_network(path: Path, network_a: nn.Module, network_b: nn.Module,
                          retrain: str = "train the stitches again (`stitch-ops stitching train`)") -> StitchedNetwork:
    """Rebuild a network saved by :func:`save_stitched_network` on ``network_a`` and
    ``network_b``, the parents its stitches were trained between (checked by their weights);
    ``retrain`` ends every error message (how the caller's user trains them again).

    Raises:
        InputFileError: if ``path`` is not a saved stitched network, or the parents or their
            matches are not those the stitches were trained for.
    """
    with reading(path, "saved stitched network", retrain):
        saved = torch.load(Path(path), map_location="cpu", weights_only=True)
        description = json.loads(saved["description"])
    if description.get("format") != _FORMAT:
        raise InputFileError(f"{path} is not a saved stitched network: expected format {_FORMAT!r}, got "
                             f"{description.get('format')!r} (format 1 embedded the parents' weights); {retrain}")
    spec_a, spec_b = (ParentSpec.from_dict(d) for d in description["parents"])
    network = StitchedNetwork.from_parents(spec_a, network_a.cpu(), spec_b, network_b.cpu())
    found = [_fingerprint(network.parent_a), _fingerprint(network.parent_b)]
    for side, expected, actual in zip("ab", description["parent_weights"], found):
        if expected != actual:
            raise InputFileError(f"the stitches in {path} were trained with another parent {side.upper()}: its weights "
                                 f"differ (fingerprint {actual[:12]}, trained with {expected[:12]}); pass the parents "
                                 f"they were trained between, or {retrain}")
    if [asdict(m) for m in network.matches] != description["matches"]:
        raise InputFileError(f"the parents of {path} match differently now than when its stitches were trained "
                             f"({len(network.matches)} matches, saved {len(description['matches'])}); {retrain}")
    network.switches_a.load_state_dict(_prefixed(saved["state_dict"], "switches_a."))
    network.switches_b.load_state_dict(_prefixed(saved["state_dict"], "switches_b."))
    return network


def _prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def _fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state (names and bytes), to recognise the parents a file was saved with."""
    digest = hashlib.sha256()
    for key, value in sorted(_cpu_state(module).items()):
        digest.update(key.encode())
        digest.update(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` whole or not at all (:func:`stitch_ops.outputs.output_file`): a killed
    writer leaves the old file intact."""
    with output_file(path) as tmp:
        torch.save(obj, tmp)


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _frozen(module: fx.GraphModule) -> fx.GraphModule:
    module.eval()
    module.requires_grad_(False)
    return module


def _stitch(source: NetworkGraph, target: NetworkGraph, source_name: str, target_name: str) -> Stitch:
    """The stitch from ``source_name`` (in ``source``) to ``target_name`` (in ``target``)."""
    node_in, node_out = source.node(source_name), target.node(target_name)
    if not (node_in.is_feature_map and node_out.is_feature_map):
        raise ValueError(f"a match must pair feature maps, got {source_name!r} (shape {node_in.shape}) and {target_name!r} (shape {node_out.shape})")
    if node_in.downsampling != node_out.downsampling or len(node_in.shape) != len(node_out.shape):
        raise ValueError(
            f"a match must pair feature maps of the same downsampling and dimensionality, got {source_name!r} "
            f"{node_in.shape} (downsampling {node_in.downsampling}) and {target_name!r} {node_out.shape} "
            f"(downsampling {node_out.downsampling})"
        )
    return Stitch(node_in.channels, node_out.channels, len(node_in.shape))
