"""Trace a network into a DAG of feature maps (DESIGN.md, "The method in one page", step 1).

A network is traced with :mod:`torch.fx` into a graph whose nodes are the
operations in topological order. Every node whose output is a feature map
(``B C`` or ``B C H W [D]``) is a place where a stitch can read or write.
For each node we record what matching (:mod:`stitch_ops.graph.matching`)
needs: the output shape on a probe input, the spatial downsampling factor
relative to that input, the progress along the network and the in/out degree.

In-place operations are rewritten to out-of-place ones: nnU-Net's
``LeakyReLU(inplace=True)`` would otherwise overwrite the output of the
normalisation before it, so a stitch or switch tapping that output would read
a corrupted map.

Example::

    >>> graph = trace_network(network, probe_shape=(1, 1, 64, 64))
    >>> [node.name for node in graph.feature_maps()][:3]
    ['encoder_stages_0_0_convs_0_conv', 'encoder_stages_0_0_convs_0_norm', ...]
"""

from __future__ import annotations

import copy
import inspect
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["GraphNode", "NetworkGraph", "make_out_of_place", "trace_network"]

_IN_PLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift,
}


@dataclass(frozen=True)
class GraphNode:
    """One operation of a traced network.

    Attributes:
        index: position in the topological order (the order of ``fx.Graph.nodes``).
        name: the fx node name; the same architecture traced twice gives the same names.
        op: the fx opcode (``placeholder``, ``call_module``, ``call_function``, ...).
        inputs: names of the nodes this node reads.
        shape: output shape on the probe input, ``None`` if the output is not a tensor.
        downsampling: probe spatial size / output spatial size per spatial axis;
            ``()`` for a ``B C`` tensor; ``None`` if the node is not a feature map.
        progress: ``index / (number of nodes - 1)``, in [0, 1].
        in_degree: number of input nodes.
        out_degree: number of consumer nodes.
    """

    index: int
    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...] | None
    downsampling: tuple[float, ...] | None
    progress: float
    in_degree: int
    out_degree: int

    @property
    def is_feature_map(self) -> bool:
        """Whether a stitch can read or write here."""
        return self.downsampling is not None

    @property
    def channels(self) -> int:
        """Number of channels ``C`` of the feature map."""
        if self.shape is None or len(self.shape) < 2:
            raise ValueError(f"node {self.name!r} has no channel dimension (shape {self.shape})")
        return self.shape[1]


@dataclass(frozen=True, eq=False)
class NetworkGraph:
    """A traced network and its nodes.

    Attributes:
        module: the traced, out-of-place copy of the network; running it gives the
            network's output.
        nodes: every node, in topological order.
        probe_shape: the input shape ``B C H W [D]`` the shapes were measured with.
    """

    module: fx.GraphModule
    nodes: tuple[GraphNode, ...]
    probe_shape: tuple[int, ...]

    def feature_maps(self) -> tuple[GraphNode, ...]:
        """The nodes a stitch can be attached to, in topological order."""
        return tuple(node for node in self.nodes if node.is_feature_map)

    def node(self, name: str) -> GraphNode:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r} in the traced {type(self.module).__name__}")


def trace_network(network: nn.Module, probe_shape: Sequence[int]) -> NetworkGraph:
    """Trace ``network`` into a :class:`NetworkGraph`.

    The network is deep-copied first, so the caller's module keeps its in-place
    activations and its parameters are never shared with the traced copy.

    Args:
        network: a module with one tensor input and one tensor output (nnU-Net
            networks need ``deep_supervision=False``).
        probe_shape: ``B C H W [D]`` shape of the probe input used to measure the
            nodes' output shapes; every spatial size must be divisible by the
            network's total stride.

    Returns:
        the traced network with one :class:`GraphNode` per fx node.

    Raises:
        ValueError: if the network cannot be traced, has not exactly one input,
            or returns more than one tensor.
    """
    probe_shape = tuple(int(s) for s in probe_shape)
    if len(probe_shape) < 2:
        raise ValueError(f"probe_shape should be B C [spatial...], got {probe_shape}")
    module = _symbolic_trace(copy.deepcopy(network))
    _check_single_input_and_output(module)
    make_out_of_place(module)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.no_grad():
        ShapeProp(module).propagate(torch.zeros(probe_shape, device=device))
    return NetworkGraph(module=module, nodes=_describe_nodes(module.graph, probe_shape), probe_shape=probe_shape)


def make_out_of_place(module: fx.GraphModule) -> None:
    """Rewrite every in-place operation of ``module`` into its out-of-place form.

    Covers modules with an ``inplace`` attribute (``nn.LeakyReLU(inplace=True)``),
    functions called with ``inplace=True`` (``F.relu(x, inplace=True)``), augmented
    operators (``x += y``) and in-place functions and methods (``torch.relu_``,
    ``x.add_(y)``). The rewrite keeps the network's function only if no other
    node reads a tensor that is modified in place, which is checked.

    Raises:
        ValueError: for an in-place method without an out-of-place twin, or an
            in-place op whose input other nodes also read.
    """
    for node in module.graph.nodes:
        if node.op == "call_module":
            submodule = module.get_submodule(node.target)
            if getattr(submodule, "inplace", False):
                _check_not_aliased(node)
                submodule.inplace = False
        elif node.op == "call_function":
            out_of_place = _out_of_place_function(node.target)
            if out_of_place is not node.target or _clear_inplace_argument(node):
                _check_not_aliased(node)
                node.target = out_of_place
        elif node.op == "call_method" and _is_in_place_name(node.target):
            if not hasattr(torch.Tensor, node.target[:-1]):
                raise ValueError(
                    f"node {node.name!r} calls the in-place method Tensor.{node.target} which has no "
                    f"out-of-place version Tensor.{node.target[:-1]}; rewrite the network without it"
                )
            _check_not_aliased(node)
            node.target = node.target[:-1]
    module.recompile()


def _symbolic_trace(network: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(network)
    except Exception as error:  # fx raises TraceError, TypeError, ... depending on the cause
        raise ValueError(
            f"could not trace {type(network).__name__} with torch.fx ({type(error).__name__}: {error}); "
            "stitching needs a network without data-dependent control flow"
        ) from error


def _check_single_input_and_output(module: fx.GraphModule) -> None:
    placeholders = [node for node in module.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"expected a network with one input, got inputs {[p.name for p in placeholders]}")
    output = next(node for node in module.graph.nodes if node.op == "output")
    if not isinstance(output.args[0], fx.Node):
        raise ValueError(
            f"expected a network that returns one tensor, got {type(output.args[0]).__name__} "
            "(for nnU-Net networks, build them with deep_supervision=False)"
        )


def _is_in_place_name(name: str) -> bool:
    return name.endswith("_") and not name.startswith("__")


def _out_of_place_function(target):
    if target in _IN_PLACE_OPERATORS:
        return _IN_PLACE_OPERATORS[target]
    name = getattr(target, "__name__", "")
    if not _is_in_place_name(name):
        return target
    namespace = inspect.getmodule(target) or torch
    return getattr(namespace, name[:-1], None) or getattr(torch, name[:-1], target)


def _clear_inplace_argument(node: fx.Node) -> bool:
    """Set an ``inplace=True`` argument to False; return whether there was one."""
    try:
        signature = inspect.signature(node.target)
    except (TypeError, ValueError):  # builtins without a Python signature
        return False
    if "inplace" not in signature.parameters:
        return False
    bound = signature.bind_partial(*node.args, **node.kwargs)
    if not bound.arguments.get("inplace"):
        return False
    bound.arguments["inplace"] = False
    node.args, node.kwargs = bound.args, bound.kwargs
    return True


def _check_not_aliased(node: fx.Node) -> None:
    """An in-place op whose input is read elsewhere changes that reader's value; out-of-place would not."""
    mutated = node.args[0] if node.args else None
    if isinstance(mutated, fx.Node) and len(mutated.users) > 1:
        raise ValueError(
            f"node {node.name!r} modifies {mutated.name!r} in place while {len(mutated.users) - 1} other node(s) "
            "read it; making it out-of-place would change what they read. Rewrite the network without the in-place op"
        )


def _describe_nodes(graph: fx.Graph, probe_shape: tuple[int, ...]) -> tuple[GraphNode, ...]:
    nodes = list(graph.nodes)
    last = max(len(nodes) - 1, 1)
    return tuple(
        GraphNode(
            index=index,
            name=node.name,
            op=node.op,
            inputs=tuple(n.name for n in node.all_input_nodes),
            shape=_shape(node),
            downsampling=_downsampling(node, probe_shape),
            progress=index / last,
            in_degree=len(node.all_input_nodes),
            out_degree=len(node.users),
        )
        for index, node in enumerate(nodes)
    )


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(int(s) for s in meta.shape) if hasattr(meta, "shape") else None


def _downsampling(node: fx.Node, probe_shape: tuple[int, ...]) -> tuple[float, ...] | None:
    """Spatial downsampling factor of a feature map; ``None`` for anything else.

    A feature map is a floating-point tensor computed by the network (not the
    input, not a parameter) with the probe's batch size and either the probe's
    number of dimensions (``B C H W [D]``) or two (``B C``).
    """
    if node.op not in ("call_module", "call_function", "call_method"):
        return None
    meta = node.meta.get("tensor_meta")
    if not hasattr(meta, "shape") or not meta.dtype.is_floating_point:
        return None
    shape = tuple(meta.shape)
    if shape[0] != probe_shape[0] or len(shape) not in (2, len(probe_shape)):
        return None
    return tuple(size_in / size_out for size_in, size_out in zip(probe_shape[2:], shape[2:]))
