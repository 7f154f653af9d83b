"""Everything the pipeline measured for one pair, read from the ``metrics/{pair}/`` tree.

The report never asks a stage what it did: it globs the files the stages agreed to write
(docs/ARCHITECTURE.md, "Contracts"), so a model kind added later appears without a change
here, and a file not produced yet is simply absent (the report says "not available in
this run"):

- ``{approach}/{trained_on}/fold_{k}/cases.csv``: per-case Dice/HD95 of every evaluated model;
- ``{approach}/{trained_on}/fold_{k}/budget.json``: the training budget of a trained model;
- ``stitch/{slug}/fold_{k}/positions.csv``, ``no_stitch.json``, ``selection.json``: scored
  stitch positions, the no-stitch reference, the positions each selection strategy chose;
- ``rq1/{c}/fold_{k}/rq1.csv``: RQ1's sampled networks;
- ``ablation/{slug}/fold_{k}/ablation.csv``: the ablation of how the stitches are trained
  (:mod:`stitch_ops.stitching.ablation`).

Each model is labelled by the paper's shorthand from the approach table; where two
models share one (the stitch-ensembles of both training methods), the label gets the
method's initials (``a←[a]→b DB`` = double-batched, ``DM`` = direct matching).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stitch_ops import approaches
from stitch_ops.config import PARTIES
from stitch_ops.evaluation.figures import hd95_unit
from stitch_ops.outputs import read_json
from stitch_ops.paths import PairPaths

logger = logging.getLogger(__name__)

__all__ = ["METHOD_INITIALS", "PairResults", "StitchSlug", "load_pair", "model_label", "role"]

METHOD_INITIALS = {approaches.StitchMethod.DOUBLE_BATCHED.value: "DB",
                   approaches.StitchMethod.DIRECT_MATCHING.value: "DM"}
"""Short names of the stitch training methods in labels and legends."""

_FOLD = re.compile(r"fold_(\d+)$")
CASE_COLUMNS = ("pair", "test_party", "approach", "trained_on", "fold", "case", "dice", "hd95")
BUDGET_COLUMNS = ("epochs", "iterations", "samples_seen", "wall_time_s")
ABLATION_COLUMNS = ("c", "method", "fold", "variant", "init", "steps", "position", "k", "selected_k", "best_k",
                    "val_dice", "dice_a", "dice_b", "own_dice", "ensemble_dice", "gap_closed", "distance")
"""The columns of an ablation table the report needs (``stitch_ops.stitching.ablation.COLUMNS`` has more)."""


@dataclass(frozen=True)
class PairResults:
    """One pair's results, as tidy tables (empty tables where nothing was produced).

    Attributes:
        pair: the pair's name.
        cases: every ``cases.csv`` row, plus ``model`` (label), ``perspective`` (``a``, ``b``,
            ``both`` or ``unknown``), ``shorthand`` and ``role``.
        models: one row per evaluated (approach, trained_on): ``model, approach, trained_on,
            shorthand, perspective, data_used, models_used, online, known, role`` (see :func:`role`).
        budgets: one row per ``budget.json``: ``model, approach, trained_on, fold``,
            :data:`BUDGET_COLUMNS`, for stitch training ``plateau_reached``,
            ``loss_per_epoch`` (a list; ``None`` where the file has none) and ``plateau_losses``
            (what the plateau criterion judged: the probe loss per epoch, or the training
            loss where no probe was measured), for fine-tuning
            ``base_lr`` and ``base_lr_source`` (``fixed``/``sweep``/``rule``; ``None`` elsewhere).
        positions: every ``positions.csv`` row plus ``slug, c, method, label, fold``.
        no_stitch: ``slug, c, method, label, fold, dice, hd95`` of the no-stitch reference.
        selections: ``slug, c, method, label, fold, strategy, k, relative_position,
            from_last_merge, note`` (``from_last_merge``: k minus the last skip concatenation's k).
        rq1: every ``rq1.csv`` row plus ``c, fold``.
        hd95_unit: ``"mm"`` (NIfTI volumes), ``"px"`` (2-D frames) or ``"units of the data"``.
        train_cases: number of cross-validation cases per party, when the raw datasets exist.
        problems: files that exist but could not be read (shown in the report).
        ablation: every ``ablation.csv`` row (columns :data:`ABLATION_COLUMNS`): per stitch-ensemble,
            fold, variant and position choice (``selected`` / ``best``), k, the test sets' Dice, the gap
            closed on c's test set and the stitches' distance from their least-squares optimum.
    """

    pair: str
    cases: pd.DataFrame
    models: pd.DataFrame
    budgets: pd.DataFrame
    positions: pd.DataFrame
    no_stitch: pd.DataFrame
    selections: pd.DataFrame
    rq1: pd.DataFrame
    hd95_unit: str = "units of the data"
    train_cases: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    ablation: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(ABLATION_COLUMNS)))


SELECTION_VARIANTS = ("all_folds", "rule_of_thumb")
"""Slug endings of the stitch-ensembles that selection strategies 2 and 3 chose."""


@dataclass(frozen=True)
class StitchSlug:
    """What a stitch trained-on slug says: ``[no_stitch_]via_{c}[_{method}][_finetuned][_{selection}]``."""

    c: str
    method: str | None
    finetuned: bool
    selection: str | None
    reference: bool

    @classmethod
    def parse(cls, slug: str) -> StitchSlug:
        reference = slug.startswith("no_stitch_")
        rest = slug.removeprefix("no_stitch_")
        match = re.match(r"^via_([^_]+)", rest)
        method = next((m for m in METHOD_INITIALS if m in rest), None)
        selection = next((s for s in SELECTION_VARIANTS if rest.endswith(f"_{s}")), None)
        return cls(match.group(1) if match else "?", method, "_finetuned" in rest, selection, reference)


def role(approach: str, trained_on: str) -> str:
    """``approach`` for a model of Table 2 (stitch-ensembles: as selection strategy 1 chose them),
    ``selection variant`` for the stitch-ensembles strategies 2 and 3 chose, ``reference`` for the
    no-stitch reference. Only ``approach`` models enter the own-data tests and the findings."""
    if approach != approaches.Approach.STITCH:
        return "approach"
    parts = StitchSlug.parse(trained_on)
    return "reference" if parts.reference else "selection variant" if parts.selection else "approach"


def model_label(approach: str, trained_on: str) -> str:
    """The label of a model in tables and figures: the paper's shorthand (+ the stitch training
    method's initials and the selection strategy for stitch-ensembles); ``approach/trained_on``
    for a model the approach table lacks."""
    model = approaches.lookup(approach, trained_on)
    if model is None:
        return f"{approach}/{trained_on}"
    if model.approach != approaches.Approach.STITCH:
        return model.shorthand
    parts = StitchSlug.parse(trained_on)
    suffix = [METHOD_INITIALS[parts.method]] if parts.method else []
    suffix += [parts.selection.replace("_", " ")] if parts.selection else []
    return " ".join([model.shorthand, *suffix])


def _operating_conditions(model: approaches.ModelId | None) -> dict[str, object]:
    """Data used, models used and whether it runs online, from the approach table."""
    if model is None:
        return {"data_used": "?", "models_used": "?", "online": "?"}
    return {"data_used": model.data_used,
            "models_used": ", ".join(model.models_used) if model.models_used else "none (trained from scratch)",
            "online": "yes" if model.online else "no"}


def _fold(path: Path) -> int | None:
    match = _FOLD.match(path.name)
    return int(match.group(1)) if match else None


def _read_json(path: Path, problems: list[str]) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError) as err:
        problems.append(f"{path}: {err}")
        return None


def _read_csv(path: Path, problems: list[str]) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as err:
        problems.append(f"{path}: {err}")
        return None


def _complete_files(root: Path, pattern: str, needed: Sequence[str], problems: list[str]) -> Iterator[tuple[Path, Any]]:
    """Each file under ``root`` matching ``pattern`` (``.csv`` as a table, else JSON) that
    reads and has the ``needed`` columns or keys; every other one is named in ``problems``."""
    for path in sorted(root.glob(pattern)):
        data = _read_csv(path, problems) if path.suffix == ".csv" else _read_json(path, problems)
        if data is None:
            continue
        missing = [key for key in needed if key not in data]
        if missing:
            problems.append(f"{path}: missing {missing}")
            continue
        yield path, data


def _cases(root: Path, problems: list[str]) -> pd.DataFrame:
    tables = [table.loc[:, list(CASE_COLUMNS)]
              for _, table in _complete_files(root, "*/*/fold_*/cases.csv", CASE_COLUMNS, problems)]
    if not tables:
        return pd.DataFrame(columns=[*CASE_COLUMNS, "model", "shorthand", "perspective", "role"])
    cases = pd.concat(tables, ignore_index=True)
    cases["case"] = cases["case"].astype(str)
    cases["test_party"] = cases["test_party"].astype(str)
    keys = cases[["approach", "trained_on"]].drop_duplicates()
    labels = {(a, t): model_label(a, t) for a, t in keys.itertuples(index=False)}
    ids = {(a, t): approaches.lookup(a, t) for a, t in keys.itertuples(index=False)}
    pairs = list(zip(cases["approach"], cases["trained_on"]))
    cases["model"] = [labels[p] for p in pairs]
    cases["shorthand"] = [ids[p].shorthand if ids[p] else labels[p] for p in pairs]
    cases["perspective"] = [ids[p].perspective if ids[p] else "unknown" for p in pairs]
    cases["role"] = [role(*p) for p in pairs]
    return cases


def _models(cases: pd.DataFrame) -> pd.DataFrame:
    rows = []
    order = {m.trained_on: i for i, m in enumerate(approaches.all_models())}
    for (approach, trained_on), _ in cases.groupby(["approach", "trained_on"], sort=False):
        model = approaches.lookup(approach, trained_on)
        rows.append({"model": model_label(approach, trained_on), "approach": approach, "trained_on": trained_on,
                     "shorthand": model.shorthand if model else model_label(approach, trained_on),
                     "perspective": model.perspective if model else "unknown",
                     **_operating_conditions(model), "known": model is not None,
                     "role": role(approach, trained_on),
                     "order": order.get(trained_on, len(order))})
    columns = ["model", "approach", "trained_on", "shorthand", "perspective", "data_used", "models_used",
               "online", "known", "role"]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows).sort_values(["order", "model"]).loc[:, columns].reset_index(drop=True)


def _curve(data: dict[str, Any], key: str) -> list[float] | None:
    """A per-epoch loss list of a budget file; ``None`` where it has none (e.g. nnU-Net trainings)."""
    value = data.get(key)
    return value if isinstance(value, list) else None


def _budgets(root: Path, problems: list[str]) -> pd.DataFrame:
    rows = []
    for path, data in _complete_files(root, "*/*/fold_*/budget.json", BUDGET_COLUMNS, problems):
        approach, trained_on = path.parts[-4], path.parts[-3]
        losses, probe = _curve(data, "loss_per_epoch"), _curve(data, "probe_loss_per_epoch")
        rows.append({"model": model_label(approach, trained_on), "approach": approach, "trained_on": trained_on,
                     "fold": _fold(path.parent), **{k: data.get(k) for k in BUDGET_COLUMNS},
                     "plateau_reached": data.get("plateau_reached"),
                     "loss_per_epoch": losses, "plateau_losses": probe or losses,
                     "base_lr": data.get("base_lr"), "base_lr_source": data.get("base_lr_source")})
    return pd.DataFrame(rows, columns=["model", "approach", "trained_on", "fold", *BUDGET_COLUMNS,
                                       "plateau_reached", "loss_per_epoch", "plateau_losses", "base_lr",
                                       "base_lr_source"])


def _stitch_identity(slug: str) -> dict[str, object]:
    """``via_a_double_batched`` → c = a, method = double_batched, and the model's label."""
    parts = StitchSlug.parse(slug)
    return {"slug": slug, "c": parts.c, "method": parts.method or "?", "label": model_label(approaches.Approach.STITCH, slug)}


def _positions(root: Path, problems: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    positions, references, selections = [], [], []
    for folder in sorted(p for p in (root / approaches.Approach.STITCH).glob("*/fold_*") if p.is_dir()):
        identity = {**_stitch_identity(folder.parent.name), "fold": _fold(folder)}
        if (folder / "positions.csv").is_file():
            table = _read_csv(folder / "positions.csv", problems)
            if table is not None and {"k", "dice", "hd95"} <= set(table.columns):
                for key, value in identity.items():
                    table[key] = value
                positions.append(table)
            elif table is not None:
                problems.append(f"{folder / 'positions.csv'}: needs columns k, dice, hd95")
        if (folder / "no_stitch.json").is_file():
            data = _read_json(folder / "no_stitch.json", problems)
            if data is not None:
                references.append({**identity, "dice": data.get("dice"), "hd95": data.get("hd95")})
        if (folder / "selection.json").is_file():
            data = _read_json(folder / "selection.json", problems) or {}
            for strategy, chosen in data.items():
                if isinstance(chosen, dict):
                    selections.append({**identity, "strategy": strategy, "k": chosen.get("k"),
                                       "relative_position": chosen.get("relative_position"),
                                       "from_last_merge": chosen.get("from_last_merge"),
                                       "note": chosen.get("note", "")})
    identity_columns = ["slug", "c", "method", "label", "fold"]
    return (pd.concat(positions, ignore_index=True) if positions else pd.DataFrame(columns=identity_columns),
            pd.DataFrame(references, columns=[*identity_columns, "dice", "hd95"]),
            pd.DataFrame(selections, columns=[*identity_columns, "strategy", "k", "relative_position",
                                              "from_last_merge", "note"]))


def _rq1(root: Path, problems: list[str]) -> pd.DataFrame:
    tables = []
    for path, table in _complete_files(root / "rq1", "*/fold_*/rq1.csv", ("method", "n_stitches", "dice", "hd95"),
                                       problems):
        table["c"] = path.parts[-3]
        table["fold"] = _fold(path.parent)
        tables.append(table)
    columns = ["c", "fold", "method", "n_stitches", "sample", "dice", "hd95"]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)


def _ablation(root: Path, problems: list[str]) -> pd.DataFrame:
    tables = [table.loc[:, list(ABLATION_COLUMNS)]
              for _, table in _complete_files(root / "ablation", "*/fold_*/ablation.csv", ABLATION_COLUMNS, problems)]
    tables = [table for table in tables if not table.empty]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(ABLATION_COLUMNS))


def _raw_facts(root: Path, pair: str) -> tuple[str, dict[str, int]]:
    """HD95's unit (from the datasets' file ending) and each party's number of CV cases."""
    unit, sizes = "units of the data", {}
    for party in PARTIES:
        try:
            info = read_json(PairPaths(pair, root).raw_dataset(party) / "dataset.json")
        except (OSError, ValueError):
            continue
        unit = hd95_unit(str(info.get("file_ending", "")))
        if isinstance(info.get("numTraining"), int):
            sizes[party] = info["numTraining"]
    return unit, sizes


def load_pair(pair: str, root: Path = Path(".")) -> PairResults:
    """Read every result of ``pair`` under ``root`` (the repository root).

    Missing files give empty tables; unreadable ones are listed in ``problems`` rather
    than stopping the report.
    """
    metrics_root = PairPaths(pair, Path(root)).metrics_root
    problems: list[str] = []
    cases = _cases(metrics_root, problems)
    positions, no_stitch, selections = _positions(metrics_root, problems)
    unit, sizes = _raw_facts(Path(root), pair)
    results = PairResults(pair=pair, cases=cases, models=_models(cases), budgets=_budgets(metrics_root, problems),
                          positions=positions, no_stitch=no_stitch, selections=selections,
                          rq1=_rq1(metrics_root, problems), hd95_unit=unit, train_cases=sizes, problems=problems,
                          ablation=_ablation(metrics_root, problems))
    logger.info("%s: %d per-case rows of %d models, %d budgets, %d scored positions, %d RQ1 rows, %d ablation rows%s",
                pair, len(cases), len(results.models), len(results.budgets), len(positions), len(results.rq1),
                len(results.ablation),
                f"; {len(problems)} unreadable files" if problems else "")
    return results
