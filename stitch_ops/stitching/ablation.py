"""The ablation of how the stitches are trained (issue 22; ours, not the paper's).

The paper trains default-initialised stitches for a fixed, short schedule. Are its stitch-ensembles
good *because* the stitches stay imperfect? A stitch fitted to its least-squares optimum reproduces
the other network's own feature map on c's images (its mistakes included), so averaging it in
changes little. For one stitch-ensemble ``a←[c]→b`` (the pipeline's, trained by ``stitch_train``
and selected by ``stitch_select``: the *default* variant, read, never retrained) this stage trains
the stitches again on the same images as

- ``least_squares``: started from the least-squares fit (:func:`~stitch_ops.stitching.train.fit_stitches_least_squares`), same schedule;
- ``schedule_x2`` / ``schedule_x4``: default-initialised, for 2× / 4× the epochs (the cosine spread over them),

and, for each variant and the default, scores every position the pipeline scored on c's validation
cases, selects k by strategy 1 (:func:`~stitch_ops.evaluation.selection.select_position`), and
scores both parties' test sets at the selected k and at the k of the best validation Dice. At each
of those k it measures how far the two stitches are from their least-squares optimum: the relative
Frobenius distance ``||M - M_ls|| / ||M_ls||`` of the affine map ``M = [W | b]`` (weight and bias
of the 1x1 convolution), averaged over the stitch into A and the one into B, with ``M_ls`` fitted
on a copy of the network to the batches the ``least_squares`` variant starts from (so that variant
starts at distance 0). *Gap closed* on c's test set is
``(D(stitch-ensemble) - D(a&b)) / (D(c's own model) - D(a&b))`` (mean Dice; ``a&b``: the plain
ensemble; undefined where ``a&b`` is not below the own model).

Writes ``metrics/{pair}/ablation/via_{c}_{method}/fold_k/``: ``ablation.csv`` (one row per
variant and position choice: :data:`COLUMNS`), ``ablation.json`` (the same numbers keyed for
``dvc metrics show``) and ``positions.csv`` (every variant's scored positions); the trained
stitches stay in ``models/{pair}/ablation/via_{c}_{method}/fold_k/{variant}/`` (resumable: a
killed run continues from its last epoch; a finished variant is reused while its settings and
parents are unchanged). The report (:mod:`stitch_ops.evaluation.report`) gathers every table of a
pair into its "Ablation" section.

Usage::

    python -m stitch_ops.stitching.ablation --pair polyp --c a --fold 0   # or: stitch-ops ablation ...
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd

from stitch_ops import approaches
from stitch_ops.approaches import StitchMethod
from stitch_ops.budget import TrainingClock
from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, ConfigError, Params, load_section
from stitch_ops.data.splits import read_fold
from stitch_ops.errors import InputFileError
from stitch_ops.evaluation.evaluate import evaluate_folder
from stitch_ops.evaluation.selection import SelectionStrategy, select_position
from stitch_ops.nnunet.env import nnunet_threads
from stitch_ops.nnunet.model import NnUNetModel, load_model
from stitch_ops.nnunet.predict import predict_folder, preprocess_cases
from stitch_ops.outputs import output_dir, read_json, scratch_dir, write_json, write_table
from stitch_ops.paths import VALIDATION_SET, PairPaths, test_set
from stitch_ops.stitching import RandomPatches, extract_stitch_ensemble
from stitch_ops.stitching.artifacts import (APPROACH, NETWORK_FILE, load_trained_network, parent_dirs, trained_on,
                                            training_images)
from stitch_ops.stitching.network import load_stitched_network
from stitch_ops.stitching.scoring import score_positions
from stitch_ops.stitching.settings import StitchingParams
from stitch_ops.stitching.train import fit_stitches_least_squares, patch_size, train_stitch_network
from stitch_ops.warm_start import stage_main

logger = logging.getLogger(__name__)

__all__ = ["ABLATION", "COLUMNS", "DEFAULT_VARIANT", "AblationParams", "Variant", "best_position",
           "distance_from_optimum", "gap_closed", "least_squares_optimum", "run", "stitch_affines",
           "variant_config"]

ABLATION = "ablation"
"""The folder name under ``models/{pair}/`` and ``metrics/{pair}/``."""
DEFAULT_VARIANT = "default"
"""The pipeline's own stitch-ensemble (``stitching.training`` as it is), read from its stages."""
VARIANT_FILE = "variant.json"
"""In each variant's model folder: the schedule and parents its stitches were trained for."""
COLUMNS = ("pair", "c", "method", "fold", "variant", "init", "epochs", "steps", "position", "k", "selected_k",
           "best_k", "matches", "val_dice", "dice_a", "dice_b", "own_dice", "ensemble_dice", "gap_closed",
           "distance", "training_s")
"""``ablation.csv``: ``position`` is ``selected`` (strategy 1) or ``best`` (best validation Dice);
``dice_a`` / ``dice_b``: mean Dice on a's / b's test set at k; ``own_dice`` / ``ensemble_dice``: c's
basis model and ``a&b`` on c's test set; ``distance``: from the least-squares optimum at k;
``training_s``: the wall time of the variant's stitch training (empty for the default)."""


class Variant(StrEnum):
    """How a variant trains its stitches, compared with the pipeline's (``default``)."""

    LEAST_SQUARES = "least_squares"
    SCHEDULE_X2 = "schedule_x2"
    SCHEDULE_X4 = "schedule_x4"


SCHEDULE_FACTORS = {Variant.SCHEDULE_X2: 2, Variant.SCHEDULE_X4: 4}


@dataclass(frozen=True)
class AblationParams:
    """``params.yaml`` section ``stitching.ablation``: ``load_section(params, "stitching.ablation", AblationParams)``.

    Attributes:
        pairs: the pairs to run it on (a subset of ``pairs``).
        c_parties: the parties c whose stitch-ensembles ``a←[c]→b`` are ablated (a subset of
            ``stitching.c_parties``).
        method: the stitch training method (one of ``stitching.methods``: its stitch-ensemble is
            the default variant).
        variants: among :class:`Variant`; the default variant is always there.
    """

    pairs: tuple[str, ...]
    c_parties: tuple[str, ...]
    method: StitchMethod
    variants: tuple[Variant, ...] = tuple(Variant)

    def __post_init__(self) -> None:
        if not self.pairs or not all(isinstance(p, str) for p in self.pairs):
            raise ConfigError(f"'stitching.ablation.pairs' must list at least one pair, got {list(self.pairs)}")
        bad = [c for c in self.c_parties if c not in PARTIES]
        if bad or not self.c_parties:
            raise ConfigError(f"'stitching.ablation.c_parties' must list parties among {list(PARTIES)}, got "
                              f"{list(self.c_parties)}")
        try:
            object.__setattr__(self, "method", StitchMethod(self.method))
        except ValueError:
            raise ConfigError(f"'stitching.ablation.method' must be one of {[m.value for m in StitchMethod]}, got "
                              f"{self.method!r}") from None
        try:
            object.__setattr__(self, "variants", tuple(Variant(v) for v in self.variants))
        except ValueError:
            raise ConfigError(f"'stitching.ablation.variants' must be among {[v.value for v in Variant]} (the "
                              f"default variant is always run), got {list(self.variants)}") from None
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"'stitching.ablation.variants' must list distinct variants, got "
                              f"{[v.value for v in self.variants]}")

    @classmethod
    def load(cls, params: Params) -> AblationParams:
        """The section, checked against the pipeline it ablates: its pairs, c and method must be
        among those whose stitch-ensembles the pipeline trains."""
        section = load_section(params, "stitching.ablation", cls)
        stitching = load_section(params, "stitching", StitchingParams)
        for key, values, known in (("pairs", section.pairs, params.pairs),
                                   ("c_parties", section.c_parties, stitching.c_parties),
                                   ("method", (section.method,), stitching.methods)):
            missing = [str(v) for v in values if v not in known]
            if missing:
                raise ConfigError(f"'stitching.ablation.{key}' names {missing}, which the pipeline does not stitch "
                                  f"(its {'pairs' if key == 'pairs' else 'stitching.' + key}: "
                                  f"{[str(k) for k in known]}); the ablation compares with that stitch-ensemble")
        return section


def variant_config(base: Any, variant: Variant | str) -> Any:
    """The :class:`~stitch_ops.stitching.train.StitchTrainingConfig` of ``variant``, from the
    pipeline's own (``StitchingParams.training_config(method, seed)``): ``least_squares`` starts from
    the least-squares fit on the same schedule; ``schedule_x2`` / ``schedule_x4`` start from the
    default initialisation and train 2 / 4 times the epochs."""
    variant = Variant(variant)
    if variant is Variant.LEAST_SQUARES:
        return replace(base, init="least_squares")
    return replace(base, init="default", epochs=SCHEDULE_FACTORS[variant] * base.epochs)


# ---------------------------------------------------------------- distances and gaps


def stitch_affines(network: Any) -> list[tuple[Any, Any]]:
    """Per match k, the affine maps ``[W | b]`` (``C_out x (C_in + 1)``, float64, detached) of the
    stitch into A and of the stitch into B."""
    import torch

    def affine(switch: Any) -> torch.Tensor:
        weight, bias = switch.stitch.affine()
        return torch.cat([weight, bias[:, None]], dim=1).detach().to("cpu", torch.float64)

    return [(affine(a), affine(b)) for a, b in zip(network.switches_a, network.switches_b)]


def least_squares_optimum(network: Any, batches: Iterable[Any]) -> list[tuple[Any, Any]]:
    """:func:`stitch_affines` of the least-squares fit on ``batches`` (images ``B C H W [D]``),
    fitted on a copy: ``network`` keeps its stitches."""
    import copy

    reference = copy.deepcopy(network)
    fit_stitches_least_squares(reference, batches)
    return stitch_affines(reference)


def distance_from_optimum(network: Any, optimum: Sequence[tuple[Any, Any]], k: int) -> float:
    """The stitches at match ``k``: ``||M - M_ls||_F / ||M_ls||_F`` for the stitch into A and the
    one into B, averaged (0: both at the least-squares optimum; 1: e.g. zero maps, or twice the optimum).

    Example:
        >>> distance_from_optimum(network, stitch_affines(network), 0)  # doctest: +SKIP
        0.0
    """
    import torch

    if not 0 <= k < len(optimum):
        raise ValueError(f"k should be a match index in 0..{len(optimum) - 1}, got {k}")
    trained = stitch_affines(network)[k]
    return float(sum(torch.linalg.norm(m - ls) / torch.linalg.norm(ls) for m, ls in zip(trained, optimum[k])) / 2)


def gap_closed(stitched: float, ensemble: float, own: float) -> float:
    """``(stitched - ensemble) / (own - ensemble)``: the share of the gap between the plain ensemble
    ``a&b`` and c's own model on c's test set that the stitch-ensemble closes (NaN without a gap)."""
    gap = own - ensemble
    return (stitched - ensemble) / gap if gap > 0 else float("nan")


def best_position(positions: pd.DataFrame) -> int:
    """The k of the highest validation Dice (ties: the lower k)."""
    order = positions.sort_values(["dice", "k"], ascending=[False, True])
    return int(order.iloc[0]["k"])


# ---------------------------------------------------------------- the stage


def _parents_identity(folders: Sequence[Path]) -> list[str]:
    """SHA-256 of each parent's exported weights: stitches trained for other parents are not reused."""
    return [hashlib.sha256((folder / "weights.pth").read_bytes()).hexdigest() for folder in folders]


def _trained_variant(model_a: Any, model_b: Any, parents: list[str], images: Any, patch: Any, config: Any,
                     out: Path, progress: bool) -> tuple[Any, float]:
    """The variant's stitched network, trained into ``out`` (resumable), or reused when ``out``
    holds one trained with this schedule between these parents; and its training wall time."""
    wanted = {"config": config.to_dict(), "parents": parents}
    record = out / VARIANT_FILE
    if record.is_file() and read_json(record) != wanted:
        logger.info("%s was trained with other settings or parents: training it again", out)
        shutil.rmtree(out)
    if (out / NETWORK_FILE).is_file():
        try:
            network = load_stitched_network(out / NETWORK_FILE, model_a.network, model_b.network)
            logger.info("reusing the stitches trained in %s", out)
            return network, TrainingClock(out).seconds
        except InputFileError as err:
            logger.info("%s: training again", err)
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, wanted)
    with nnunet_threads():  # as the pipeline's stitch_train stages train
        network, _ = train_stitch_network(model_a, model_b, images, patch, config, out, progress)
    return network, TrainingClock(out).seconds


@dataclass(frozen=True)
class _Scoring:
    """What scoring a stitch-ensemble on the test sets needs."""

    params: Params
    pair: str
    c: str
    fold: int
    own: Any
    scratch: Path
    progress: bool

    def test_dice(self, network: Any, k: int, name: str) -> dict[str, float]:
        """Mean Dice of the stitch-ensemble of ``network`` at ``k`` on each party's test set."""
        paths = PairPaths(self.pair)
        model = NnUNetModel(extract_stitch_ensemble(network, k), self.own.plans, self.own.dataset_json,
                            self.own.configuration, None, f"{name} stitch-ensemble k={k}")
        dice = {}
        for party in PARTIES:
            raw = paths.raw_dataset(party)
            folder = predict_folder(model, raw / "imagesTs", self.scratch / name / f"k{k}" / test_set(party),
                                    save_probabilities=False, device=self.params.nnunet.device,
                                    progress=self.progress)
            cases = evaluate_folder(folder, raw / "labelsTs", self.own.dataset_json["file_ending"], progress=False,
                                    pair=self.pair, test_party=party, approach=ABLATION, trained_on=name,
                                    fold=self.fold)
            dice[party] = float(cases["dice"].mean())
        return dice


def _rows(identity: dict[str, Any], positions: pd.DataFrame, network: Any, optimum: Any,
          dice_at: dict[int, dict[str, float]], references: dict[str, float], training_s: float | None,
          c: str) -> list[dict[str, Any]]:
    """The two rows (selected, best) of one variant."""
    selected = int(positions.loc[positions["selected"], "k"].iloc[0])
    best = best_position(positions)
    val = dict(zip(positions["k"], positions["dice"]))
    rows = []
    for name, k in (("selected", selected), ("best", best)):
        dice = dice_at[k]
        rows.append({**identity, "position": name, "k": k, "selected_k": selected, "best_k": best,
                     "matches": len(network.matches), "val_dice": float(val[k]), "dice_a": dice["a"],
                     "dice_b": dice["b"], "own_dice": references["own"], "ensemble_dice": references["ensemble"],
                     "gap_closed": gap_closed(dice[c], references["ensemble"], references["own"]),
                     "distance": distance_from_optimum(network, optimum, k), "training_s": training_s})
    return rows


def run(params: Params, pair: str, c: str, fold: int, progress: bool = True) -> pd.DataFrame:
    """The ``stitch_ablation@{pair}-{c}-{fold}`` stage (see the module docstring); returns ``ablation.csv``."""
    ablation = AblationParams.load(params)
    params.pair(pair)
    if pair not in ablation.pairs or c not in ablation.c_parties:
        raise ConfigError(f"the ablation runs on pairs {list(ablation.pairs)} and c in {list(ablation.c_parties)} "
                          f"(params 'stitching.ablation'), not on pair {pair!r} with c = {c!r}")
    method = ablation.method.value
    base = load_section(params, "stitching", StitchingParams).training_config(method, params.seed)
    paths = PairPaths(pair)
    slug = trained_on(c, method)
    folders = parent_dirs(paths, c, fold)
    model_a, model_b = (load_model(folder) for folder in folders)
    own = (model_a, model_b)[PARTIES.index(c)]
    logger.info("%s fold %d: ablation of %s (c = %s, %s; variants %s), parents %s", pair, fold, slug, c, method,
                [v.value for v in ablation.variants], [str(f) for f in folders])

    hint = "run the stitching stages of this stitch-ensemble first (`dvc repro stitch_select`)"
    main_positions = pd.read_csv(paths.scores(APPROACH, slug, fold) / "positions.csv")
    main_positions["selected"] = main_positions["selected"].astype(str).str.lower() == "true"
    main_summary = read_json(paths.metrics(APPROACH, slug, fold) / "summary.json", hint=hint)
    ensemble, local = approaches.ensemble(), approaches.local(c)
    references = {
        "ensemble": read_json(paths.metrics(ensemble.approach, ensemble.trained_on, fold) / "summary.json",
                              hint="run the ensemble stage first")[f"test_{c}/dice_mean"],
        "own": read_json(paths.metrics(local.approach, local.trained_on, fold) / "summary.json",
                         hint="run the evaluate stage of c's basis model first")[f"test_{c}/dice_mean"]}

    images = training_images(paths, c, fold, own)
    patches = RandomPatches(images, patch_size(own), base.batch_size, base.seed)
    default = load_trained_network(paths, c, method, fold)
    # the batches the least_squares variant starts from (train_stitches: the first init_batches of epoch 0)
    optimum = least_squares_optimum(default, itertools.islice(patches.epoch(0), base.init_batches))
    raw = paths.raw_dataset(c)
    val_cases = list(read_fold(raw, fold).val)
    preprocessed = preprocess_cases(own, raw / "imagesTr", val_cases, progress)  # once, for every variant
    evaluated = sorted(int(k) for k in main_positions["k"])  # the positions the pipeline scored
    model_root = paths.model_dir(ABLATION, slug, fold)
    parents = _parents_identity(folders)

    identity = {"pair": pair, "c": c, "method": method, "fold": fold}
    rows, tables = [], [main_positions.loc[:, ["k", "dice", "hd95", "selected"]].assign(variant=DEFAULT_VARIANT)]
    with scratch_dir(model_root / "scratch") as scratch:
        scoring = _Scoring(params, pair, c, fold, own, scratch, progress)
        selected = int(main_positions.loc[main_positions["selected"], "k"].iloc[0])
        dice_at = {selected: {p: float(main_summary[f"test_{p}/dice_mean"]) for p in PARTIES}}
        best = best_position(main_positions)
        if best not in dice_at:
            dice_at[best] = scoring.test_dice(default, best, DEFAULT_VARIANT)
        rows += _rows({**identity, "variant": DEFAULT_VARIANT, "init": base.init, "epochs": base.epochs,
                       "steps": base.epochs * base.iterations_per_epoch}, main_positions, default, optimum, dice_at,
                      references, None, c)
        del default
        for variant in ablation.variants:
            config = variant_config(base, variant)
            network, seconds = _trained_variant(model_a, model_b, parents, images, patch_size(own), config,
                                                model_root / variant.value, progress)
            scored = score_positions(network, evaluated, own, preprocessed, raw / "labelsTr",
                                     scratch / variant.value / "positions", params.nnunet.device, pair=pair,
                                     test_party=f"{VALIDATION_SET}_{c}", approach=ABLATION,
                                     trained_on=f"{slug}_{variant.value}", fold=fold, cases=val_cases)
            positions = pd.DataFrame([{"k": k, "dice": scored[k]["dice"].mean(), "hd95": scored[k]["hd95"].mean()}
                                      for k in evaluated])
            positions["selected"] = positions["k"] == select_position(positions, SelectionStrategy.CURRENT_FOLD)
            tables.append(positions.assign(variant=variant.value))
            dice_at = {k: scoring.test_dice(network, k, variant.value)
                       for k in {int(positions.loc[positions["selected"], "k"].iloc[0]), best_position(positions)}}
            rows += _rows({**identity, "variant": variant.value, "init": config.init, "epochs": config.epochs,
                           "steps": config.epochs * config.iterations_per_epoch}, positions, network, optimum,
                          dice_at, references, seconds, c)
            logger.info("%s %s fold %d, %s: %s", pair, slug, fold, variant.value,
                        "; ".join(f"{r['position']} k={r['k']} Dice a {r['dice_a']:.3f} b {r['dice_b']:.3f}, gap "
                                  f"closed {r['gap_closed']:.2f}, distance {r['distance']:.3f}" for r in rows[-2:]))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    with output_dir(paths.metrics(ABLATION, slug, fold)) as staging:
        write_table(staging / "ablation.csv", table)
        write_table(staging / "positions.csv", pd.concat(tables, ignore_index=True))
        write_json(staging / "ablation.json", _metrics(table))
    return table


def _metrics(table: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """``ablation.json``: per variant and position choice, k, both test sets' Dice, gap closed, distance."""
    def number(value: Any) -> float | None:
        return None if pd.isna(value) else round(float(value), 4)

    return {f"{row.variant}/{row.position}": {"k": int(row.k), "dice_a": number(row.dice_a),
                                              "dice_b": number(row.dice_b), "gap_closed": number(row.gap_closed),
                                              "distance": number(row.distance)}
            for row in table.itertuples()}


# ---------------------------------------------------------------- command line


def _run(args: argparse.Namespace, params: Params) -> None:
    run(params, args.pair, args.c, args.fold, args.progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common_options()])
    parser.add_argument("--pair", required=True, help="dataset pair, one of params 'stitching.ablation.pairs'")
    parser.add_argument("--c", required=True, choices=PARTIES,
                        help="c in a←[c]→b: the party whose unlabeled images train the stitches")
    parser.add_argument("--fold", type=int, required=True, choices=range(5))
    parser.set_defaults(command="ablation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"ablation": _run})


if __name__ == "__main__":
    sys.exit(stage_main(main))
