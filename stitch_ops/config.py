"""Typed view of ``params.yaml``: every knob of the pipeline, validated once at load time.

``params.yaml`` is plain data that DVC tracks key by key; the stages never read it
directly but go through :func:`load_params`, and each stage turns its own section into a
frozen, self-validating dataclass with :func:`load_section`, so a typo or an
out-of-range value fails before any work starts, naming the key (and the nearest valid
one for a misspelling). Profiles (``smoke``/``quick``/``paper``)
are overlays in ``stitch_ops/profiles/`` that :func:`apply_profile` writes into
``params.yaml`` (comments kept), so ``git diff params.yaml`` shows what a profile
changes and DVC reruns exactly the affected stages.
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stitch_ops.errors import UserError, one_line

PARTIES = ("a", "b")
DEFAULT_PARAMS = Path("params.yaml")
DEFAULT_PROFILE = "quick"
"""The profile the committed ``params.yaml`` holds: what ``make run`` runs, and what the stitch
task's and the bundle definitions' defaults come from."""
NNUNET_CPU_DEFAULTS = {"nnUNet_def_n_proc": "1", "nnUNet_compile": "f"}
"""nnU-Net's settings for a 2-core machine without GPU (DESIGN.md), set where the environment
does not (a user's own win): by :func:`stitch_ops.nnunet.env.configure` and, before nnU-Net is
imported (it reads ``nnUNet_def_n_proc`` then), by the warm-start server."""


class ConfigError(UserError):
    """A value in ``params.yaml`` (or a profile) is missing or invalid."""


class Pair(StrEnum):
    """The dataset pairs the embedded generator knows."""

    POLYP = "polyp"
    PELVIS = "pelvis"


T = TypeVar("T")


def _nearest(key: str, candidates: Any) -> str:
    close = difflib.get_close_matches(key, sorted(candidates), 1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(section: str, given: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        hints = [f"{key!r}{_nearest(key, allowed)}" for key in unknown]
        raise ConfigError(f"unknown key(s) in params section '{section}': {', '.join(hints)}; "
                          f"allowed: {sorted(allowed)}")


def _types(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a type hint (``float | None`` -> ``(float, NoneType)``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _coerce(section: str, key: str, value: Any, annotation: Any) -> Any:
    """YAML reads ``1e-3`` as a string and lists where a frozen record wants tuples."""
    alternatives = _types(annotation)
    if isinstance(value, str) and float in alternatives and str not in alternatives:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"params '{section}.{key}' must be a number, got {value!r}") from None
    if isinstance(value, list) and any(typing.get_origin(t) is tuple for t in alternatives):
        return tuple(value)
    return value


def section_from_mapping(raw: Mapping[str, Any] | None, section: str, cls: type[T], **fixed: Any) -> T:
    """The dataclass ``cls`` built from the mapping ``raw`` of params section ``section``.

    ``fixed`` fields are set by the caller (e.g. a pair's name), not read from the file.

    Raises:
        ConfigError: a key is unknown (naming the nearest valid one), a required key is
            missing, or ``cls`` rejects a value.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"params '{section}' must be a mapping of keys to values, got {raw!r}")
    allowed = {f.name for f in fields(cls) if f.init} - set(fixed)
    _check_keys(section, raw, allowed)
    required = sorted(f.name for f in fields(cls) if f.init and f.name not in fixed and f.default is MISSING
                      and f.default_factory is MISSING)
    missing = [key for key in required if key not in raw]
    if missing:
        raise ConfigError(f"params section '{section}' is missing the key(s) {missing}; it needs {required}")
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # an annotation only importable under TYPE_CHECKING: no coercion
        hints = {}
    values = {key: _coerce(section, key, value, hints.get(key, Any)) for key, value in raw.items()}
    return cls(**values, **fixed)


def load_section(params: Params | Mapping[str, Any], section: str, cls: type[T], **fixed: Any) -> T:
    """One section of ``params.yaml`` (``section``; dotted for a nested one, ``data.polyp``) as
    the frozen, self-validating dataclass ``cls``.

    Example:
        >>> load_section({"merged": {"epochs": 2}}, "merged", MergedParams)  # doctest: +SKIP
        MergedParams(epochs=2, iterations_per_epoch=25)

    Raises:
        ConfigError: the section is absent, or a key is missing, misspelled (the message
            names the nearest valid key) or out of range.
    """
    node: Any = params.raw if isinstance(params, Params) else params
    parts = section.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "params.yaml"
        if not isinstance(node, Mapping) or part not in node:
            known = sorted(node) if isinstance(node, Mapping) else []
            raise ConfigError(f"{where} has no section {part!r}{_nearest(part, known)}; known: {known}")
        node = node[part]
    return section_from_mapping(node, section, cls, **fixed)


def positive_int(section: str, key: str, value: Any) -> int:
    """``value`` if it is an integer >= 1 (a bool is not), else a ConfigError naming ``section.key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"params '{section}.{key}' must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class PairData:
    """Where a pair's two datasets come from.

    ``source`` is ``"synthetic"`` (the embedded generator) or a mapping
    ``{a: path, b: path}`` to two existing nnU-Net raw datasets (e.g. converted
    real data); sizes only apply to the generator.
    """

    name: str
    source: str | Mapping[str, str] = "synthetic"
    cases: Mapping[str, int] = field(default_factory=lambda: {"a": 60, "b": 36})
    image_size: int = 96

    def __post_init__(self) -> None:
        section = f"data.{self.name}"
        if self.source == "synthetic":
            if self.name not in {p.value for p in Pair}:
                raise ConfigError(f"'{section}.source' is 'synthetic' but the generator only knows "
                                  f"{[p.value for p in Pair]}; point 'source' at two nnU-Net raw "
                                  f"datasets instead: {{a: path, b: path}}")
            if set(self.cases) != set(PARTIES):
                raise ConfigError(f"'{section}.cases' needs a count for each party {PARTIES}, "
                                  f"got {dict(self.cases)}")
            for party, n in self.cases.items():
                positive_int(section, f"cases.{party}", n)
        elif isinstance(self.source, Mapping):
            if set(self.source) != set(PARTIES):
                raise ConfigError(f"'{section}.source' must name one raw dataset per party "
                                  f"{PARTIES}, got keys {sorted(self.source)}")
        else:
            raise ConfigError(f"'{section}.source' must be 'synthetic' or {{a: path, b: path}}, "
                              f"got {self.source!r}")
        positive_int(section, "image_size", self.image_size)

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"


@dataclass(frozen=True)
class NnUNetSchedule:
    """Training schedule of every nnU-Net in the pipeline (the ``paper`` profile keeps nnU-Net's)."""

    configuration: str = "2d"
    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-2
    batch_size: int | None = None
    base_features: int | None = None
    max_features: int | None = None
    intensity_samples: int | None = None
    """Foreground voxels the planner's fingerprint samples for its intensity statistics
    (``None``: nnU-Net's 10^8 whatever the dataset's size: a 4.2 GB peak and about 30 s of CPU
    time per plan, also for the 18 small images of ``smoke``). Only CT normalisation reads those statistics; the other channels are normalised
    per image, so their preprocessed data do not depend on it."""
    device: str = "auto"
    mirroring: bool = False

    def __post_init__(self) -> None:
        for key in ("epochs", "iterations_per_epoch", "val_iterations_per_epoch"):
            positive_int("nnunet", key, getattr(self, key))
        for key in ("batch_size", "base_features", "max_features", "intensity_samples"):
            if getattr(self, key) is not None:
                positive_int("nnunet", key, getattr(self, key))
        if not 0 < float(self.initial_lr) < 1:
            raise ConfigError(f"'nnunet.initial_lr' must be in (0, 1), got {self.initial_lr!r}")
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ConfigError(f"'nnunet.device' must be auto, cpu or cuda, got {self.device!r}")

    def training_plans(self, plans: Mapping[str, Any]) -> dict[str, Any]:
        """``plans`` as this schedule trains with them: the batch size and the network's width
        overridden where the schedule sets them. Export these, not the planner's, so that the
        model's plans and its ``budget.json`` state what it really trained with.

        The width follows nnU-Net's own rule, ``min(max_features, base_features * 2**stage)``
        per stage, written into the plans' ``features_per_stage`` (the planner's
        ``UNet_base_num_features`` / ``UNet_max_features_2d``, 32 / 512): nnU-Net builds the
        narrower network from its plans, nothing of its network is forked. A convolution's
        FLOPs grow with the square of the width (a stitch-training step costs 0.37 x at half
        width); nnU-Net training on a CPU gains far less, its in-process augmentation costs the
        same (bench/README.md). Every approach trains at the same width."""
        trained = copy.deepcopy(dict(plans))
        configuration = trained["configurations"][self.configuration]
        if self.batch_size is not None:
            configuration["batch_size"] = self.batch_size
        if self.base_features is not None or self.max_features is not None:
            arch = configuration["architecture"]["arch_kwargs"]
            planned = [int(f) for f in arch["features_per_stage"]]
            base = planned[0] if self.base_features is None else self.base_features
            most = max(planned) if self.max_features is None else self.max_features
            arch["features_per_stage"] = [min(most, base * 2 ** stage) for stage in range(len(planned))]
        return trained


@dataclass(frozen=True)
class Params:
    """Everything ``params.yaml`` holds, validated. Sections of later stages stay raw mappings
    until their stage parses them (see ``section``)."""

    profile: str
    seed: int
    pairs: tuple[str, ...]
    folds: tuple[int, ...]
    data: Mapping[str, PairData]
    nnunet: NnUNetSchedule
    raw: Mapping[str, Any]

    def pair(self, name: str) -> PairData:
        if name not in self.data:
            raise ConfigError(f"pair {name!r} is not in params 'data'; known pairs: {sorted(self.data)}")
        return self.data[name]

    def section(self, name: str) -> Mapping[str, Any]:
        """A raw top-level section, for stages that parse their own typed config."""
        if name not in self.raw:
            raise ConfigError(f"params.yaml has no section {name!r}{_nearest(name, self.raw)}")
        return self.raw[name]


def parse_params(raw: Mapping[str, Any]) -> Params:
    """Validate a params mapping (as read from YAML) into :class:`Params`."""
    for key in ("profile", "seed", "pairs", "folds", "data", "nnunet"):
        if key not in raw:
            raise ConfigError(f"params.yaml is missing the top-level key {key!r}")
    if "parties" in raw:
        raise ConfigError(f"params.yaml sets 'parties', which is not a setting: the method is pairwise, every pair "
                          f"has exactly the parties {list(PARTIES)}; remove the key (several parties are not "
                          f"supported)")
    folds = tuple(raw["folds"])
    if not folds or any(not isinstance(k, int) or not 0 <= k < 5 for k in folds):
        raise ConfigError(f"'folds' must be a non-empty list of fold indices in 0..4, got {raw['folds']!r}")
    pairs = tuple(raw["pairs"])
    missing = [p for p in pairs if p not in raw["data"]]
    if missing:
        raise ConfigError(f"pairs {missing} are listed in 'pairs' but have no entry under 'data'")
    data = {name: load_section(raw, f"data.{name}", PairData, name=name) for name in raw["data"]}
    if not isinstance(raw["seed"], int) or isinstance(raw["seed"], bool) or raw["seed"] < 0:
        raise ConfigError(f"'seed' must be a non-negative integer, got {raw['seed']!r}")
    return Params(profile=str(raw["profile"]), seed=int(raw["seed"]), pairs=pairs, folds=folds,
                  data=data, nnunet=load_section(raw, "nnunet", NnUNetSchedule), raw=raw)


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate ``params.yaml``."""
    if not path.is_file():
        raise ConfigError(f"no params file at {path.resolve()}; run from the repository root "
                          f"or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML ({one_line(err)}); fix it, or restore it with "
                          f"`git checkout {path}`") from err
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must be a mapping of sections (profile, seed, pairs, ...), got {raw!r}")
    return parse_params(raw)


def profile_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("stitch_ops.profiles").iterdir()
                  if p.name.endswith(".yaml"))


def _profile_overlay(name: str) -> dict[str, Any]:
    names = profile_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown profile {name!r}{hint}; available: {names}")
    return yaml.safe_load(resources.files("stitch_ops.profiles").joinpath(f"{name}.yaml").read_text())


def _merge_into(target: Any, overlay: Mapping[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
            _merge_into(target[key], value)
        else:
            target[key] = value


def profile_params(name: str, path: Path = DEFAULT_PARAMS) -> Params:
    """``path``'s params as profile ``name`` sets them, without writing the file."""
    load_params(path)  # a missing or invalid file fails here, saying how to fix it
    raw = yaml.safe_load(path.read_text())
    _merge_into(raw, {**_profile_overlay(name), "profile": name})
    return parse_params(raw)


def apply_profile(name: str, path: Path = DEFAULT_PARAMS) -> Params:
    """Write profile ``name``'s values into ``params.yaml`` (comments preserved) and validate it."""
    from ruamel.yaml import YAML  # ships with DVC; keeps the file's comments and order

    overlay = _profile_overlay(name)
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.default_flow_style = True  # leaf lists/maps stay `[0]` / `{a: 60, b: 36}` as written
    yaml_rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = yaml_rt.load(path.read_text())
    _merge_into(document, {**overlay, "profile": name})
    parse_params(yaml.safe_load(_dump(yaml_rt, document)))  # refuse to write an invalid file
    with path.open("w") as fh:
        yaml_rt.dump(document, fh)
    return load_params(path)


def _dump(yaml_rt: Any, document: Any) -> str:
    import io

    buffer = io.StringIO()
    yaml_rt.dump(document, buffer)
    return buffer.getvalue()
