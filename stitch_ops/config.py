"""Typed view of ``params.yaml``: every knob of the pipeline, validated once at load time.

``params.yaml`` is plain data that DVC tracks key by key; the stages never read it
directly but go through :func:`load_params`, so a typo or an out-of-range value fails
before any work starts, with the key named. Profiles (``smoke``/``quick``/``paper``)
are overlays in ``stitch_ops/profiles/`` that :func:`apply_profile` writes into
``params.yaml`` (comments kept), so ``git diff params.yaml`` shows what a profile
changes and DVC reruns exactly the affected stages.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from stitch_ops.errors import UserError, one_line

PARTIES = ("a", "b")
DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(UserError):
    """A value in ``params.yaml`` (or a profile) is missing or invalid."""


class Pair(StrEnum):
    """The dataset pairs the embedded generator knows."""

    POLYP = "polyp"
    PELVIS = "pelvis"


def _check_keys(section: str, given: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        hints = [f"{key!r} (did you mean {difflib.get_close_matches(key, allowed, 1)[0]!r}?)"
                 if difflib.get_close_matches(key, allowed, 1) else repr(key) for key in unknown]
        raise ConfigError(f"unknown key(s) in params section '{section}': {', '.join(hints)}; "
                          f"allowed: {sorted(allowed)}")


def _positive_int(section: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"params '{section}.{key}' must be a positive integer, got {value!r}")
    return value


def _build(cls: type, section: str, raw: Mapping[str, Any] | None) -> Any:
    raw = dict(raw or {})
    _check_keys(section, raw, {f.name for f in fields(cls)})
    return cls(**raw)


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
                _positive_int(section, f"cases.{party}", n)
        elif isinstance(self.source, Mapping):
            if set(self.source) != set(PARTIES):
                raise ConfigError(f"'{section}.source' must name one raw dataset per party "
                                  f"{PARTIES}, got keys {sorted(self.source)}")
        else:
            raise ConfigError(f"'{section}.source' must be 'synthetic' or {{a: path, b: path}}, "
                              f"got {self.source!r}")
        _positive_int(section, "image_size", self.image_size)

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
    device: str = "auto"
    mirroring: bool = False

    def __post_init__(self) -> None:
        for key in ("epochs", "iterations_per_epoch", "val_iterations_per_epoch"):
            _positive_int("nnunet", key, getattr(self, key))
        if self.batch_size is not None:
            _positive_int("nnunet", "batch_size", self.batch_size)
        if not 0 < float(self.initial_lr) < 1:
            raise ConfigError(f"'nnunet.initial_lr' must be in (0, 1), got {self.initial_lr!r}")
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ConfigError(f"'nnunet.device' must be auto, cpu or cuda, got {self.device!r}")


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
            raise ConfigError(f"params.yaml has no section {name!r}")
        return self.raw[name]


TOP_LEVEL_KEYS = {"profile", "seed", "pairs", "parties", "folds", "data", "nnunet"}


def parse_params(raw: Mapping[str, Any]) -> Params:
    """Validate a params mapping (as read from YAML) into :class:`Params`."""
    for key in ("profile", "seed", "pairs", "folds", "data", "nnunet"):
        if key not in raw:
            raise ConfigError(f"params.yaml is missing the top-level key {key!r}")
    if list(raw.get("parties", PARTIES)) != list(PARTIES):
        raise ConfigError(f"'parties' must be {list(PARTIES)}: the method compares exactly two parties")
    folds = tuple(raw["folds"])
    if not folds or any(not isinstance(k, int) or not 0 <= k < 5 for k in folds):
        raise ConfigError(f"'folds' must be a non-empty list of fold indices in 0..4, got {raw['folds']!r}")
    pairs = tuple(raw["pairs"])
    missing = [p for p in pairs if p not in raw["data"]]
    if missing:
        raise ConfigError(f"pairs {missing} are listed in 'pairs' but have no entry under 'data'")
    data = {name: _build(PairData, f"data.{name}", {"name": name, **(section or {})})
            for name, section in raw["data"].items()}
    return Params(profile=str(raw["profile"]), seed=int(raw["seed"]), pairs=pairs, folds=folds,
                  data=data, nnunet=_build(NnUNetSchedule, "nnunet", raw["nnunet"]), raw=raw)


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
