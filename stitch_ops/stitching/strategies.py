"""Selection strategies 2 and 3 as pipeline results, and the no-stitch reference.

``reference``: the stitch-ensemble's two parents, both fed c's preprocessing through the same
predictor and averaged with no stitch (the paper's dashed line), predicted on both test sets and
on c's validation cases of the fold, so that the evaluation stage scores it like any model
(``val_c/dice_mean`` is its score "as a position"). The effect of a stitch is the difference to
it at equal preprocessing.

``strategies``: after every position of every stitch network has been scored on validation
cases (the ``scores/`` tree that ``select`` writes), apply selection strategies 1, 2 and 3
(:mod:`stitch_ops.evaluation.selection`) to one network at one fold and write, per the
contract in docs/ARCHITECTURE.md, ``metrics/{pair}/stitch/{slug}/fold_k/``:
``positions.csv`` (the scored positions with one ``selected*`` column per strategy),
``no_stitch.json`` (the reference's validation means) and ``selection.json``. The
stitch-ensembles chosen by strategies 2 and 3 are predicted on both test sets (slugs
``{slug}_all_folds`` and ``{slug}_rule_of_thumb``); a strategy that picks the k another
already predicted reuses those predictions instead of running the same network again.
Nothing here reads a test label: selection sees only the validation means in ``scores/``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from stitch_ops.config import PARTIES, Params
from stitch_ops.paths import PairPaths

logger = logging.getLogger(__name__)

APPROACH = "stitch"
TEST_SETS = tuple(f"test_{p}" for p in PARTIES)


def reference(params: Params, pair: str, data_party: str, fold: int, progress: bool = True,
              finetuned: bool = False) -> Path:
    """Predict the no-stitch reference of the stitch networks trained on c's data: both test
    sets and c's validation cases, into ``predictions/{pair}/stitch/no_stitch_via_c[...]/fold_k``."""
    from stitch_ops.baselines.approaches import no_stitch
    from stitch_ops.nnunet.model import NnUNetModel, load_model
    from stitch_ops.nnunet.predict import predict_folder
    from stitch_ops.stitching.ensemble import TwoModelEnsemble
    from stitch_ops.stitching.pipeline import _fold_cases, parent_dirs

    paths = PairPaths(pair)
    folders = parent_dirs(paths, data_party, fold, finetuned)
    parent_a, parent_b = (load_model(folder) for folder in folders)
    own = load_model(paths.model_dir("local", data_party, fold) / "export")
    model = no_stitch(data_party, finetuned)
    logger.info("%s fold %d: no-stitch reference %s = parents %s, fed party %s's preprocessing",
                pair, fold, model.shorthand, [str(f) for f in folders], data_party)
    ensemble = NnUNetModel(TwoModelEnsemble(parent_a.network, parent_b.network), own.plans, own.dataset_json,
                           own.configuration, None, f"no-stitch reference {model.shorthand}")
    out = paths.predictions(model.approach, model.trained_on, fold)
    for name in TEST_SETS:
        predict_folder(ensemble, paths.raw_dataset(name.removeprefix("test_")) / "imagesTs", out / name,
                       device=params.nnunet.device, progress=progress)
    predict_folder(ensemble, paths.raw_dataset(data_party) / "imagesTr", out / "val",
                   cases=_fold_cases(paths, data_party, fold, "val"), device=params.nnunet.device,
                   progress=progress)
    return out


def read_scores(root: Path = Path(".")) -> pd.DataFrame:
    """Every scored position table under ``scores/{pair}/stitch/{slug}/fold_k/positions.csv``,
    with ``pair``, ``slug`` and ``fold`` columns added (validation means only)."""
    tables = []
    for path in sorted((root / "scores").glob(f"*/{APPROACH}/*/fold_*/positions.csv")):
        table = pd.read_csv(path)
        fold_dir, slug_dir, pair_dir = path.parent, path.parent.parent, path.parent.parent.parent.parent
        tables.append(table.assign(pair=pair_dir.name, slug=slug_dir.name,
                                   fold=int(fold_dir.name.removeprefix("fold_"))))
    if not tables:
        raise FileNotFoundError(f"no scored positions under {root / 'scores'}: run the stitch_select stages first")
    return pd.concat(tables, ignore_index=True)


def strategies(params: Params, pair: str, data_party: str, method: str, fold: int, progress: bool = True,
               finetuned: bool = False, root: Path = Path(".")) -> dict[str, Any]:
    """Apply strategies 1-3 to one stitch network at ``fold``; write the metrics files and the
    predictions of the strategies' stitch-ensembles. Returns the ``selection.json`` record."""
    from stitch_ops.baselines.approaches import SELECTION_STRATEGIES, no_stitch, stitch_ensemble
    from stitch_ops.evaluation.selection import select_strategies

    paths = PairPaths(pair, root)
    slug = stitch_ensemble(data_party, method, finetuned).trained_on
    scores = read_scores(root)
    selection = select_strategies(scores, (pair, slug), fold)
    for strategy, choice in selection.items():
        logger.info("%s %s fold %d, %s: k=%d (relative position %.3f)%s", pair, slug, fold, strategy,
                    choice["k"], choice["relative_position"], f" - {choice['note']}" if "note" in choice else "")

    positions = pd.read_csv(paths.scores(APPROACH, slug, fold) / "positions.csv")
    positions["selected"] = positions["k"] == selection["current_fold"]["k"]
    for strategy in SELECTION_STRATEGIES[1:]:
        positions[f"selected_{strategy}"] = positions["k"] == selection[strategy]["k"]
    reference_summary = _read_json(paths.metrics(APPROACH, no_stitch(data_party, finetuned).trained_on, fold)
                                   / "summary.json")
    no_stitch_means = {"dice": reference_summary[f"val_{data_party}/dice_mean"],
                       "hd95": reference_summary[f"val_{data_party}/hd95_mean"]}

    first = SELECTION_STRATEGIES[0]
    predicted = {selection[first]["k"]: (first, paths.predictions(APPROACH, slug, fold))}
    for strategy in SELECTION_STRATEGIES[1:]:
        k = selection[strategy]["k"]
        target = paths.predictions(APPROACH, stitch_ensemble(data_party, method, finetuned, strategy).trained_on, fold)
        if k in predicted:
            earlier, folder = predicted[k]
            logger.info("%s selects k=%d like %s: reusing its predictions %s", strategy, k, earlier, folder)
            _copy_tree(folder, target)
            selection[strategy]["same_k_as"] = earlier
        else:
            _predict_position(params, paths, data_party, slug, fold, k, target, progress)
            predicted[k] = (strategy, target)

    out = paths.metrics(APPROACH, slug, fold)
    from stitch_ops.stitching.pipeline import write_csv

    write_csv(positions, out / "positions.csv")
    _write_json(no_stitch_means, out / "no_stitch.json")
    _write_json(selection, out / "selection.json")
    return selection


def _predict_position(params: Params, paths: PairPaths, data_party: str, slug: str, fold: int, k: int,
                      target: Path, progress: bool) -> None:
    """Predict both test sets and c's validation cases with the stitch-ensemble at ``k``."""
    from stitch_ops.nnunet.model import NnUNetModel, load_model
    from stitch_ops.nnunet.predict import predict_folder
    from stitch_ops.stitching import extract_stitch_ensemble, load_stitched_network
    from stitch_ops.stitching.pipeline import NETWORK_FILE, _fold_cases

    network = load_stitched_network(paths.model_dir(APPROACH, slug, fold) / "network" / NETWORK_FILE)
    own = load_model(paths.model_dir("local", data_party, fold) / "export")
    ensemble = NnUNetModel(extract_stitch_ensemble(network, k), own.plans, own.dataset_json, own.configuration,
                           None, f"stitch-ensemble k={k}")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for name in TEST_SETS:
        predict_folder(ensemble, paths.raw_dataset(name.removeprefix("test_")) / "imagesTs", staging / name,
                       device=params.nnunet.device, progress=progress)
    predict_folder(ensemble, paths.raw_dataset(data_party) / "imagesTr", staging / "val",
                   cases=_fold_cases(paths, data_party, fold, "val"), device=params.nnunet.device, progress=progress)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _copy_tree(source: Path, target: Path) -> None:
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: evaluate the no-stitch reference first (evaluate_stitch_reference)")
    return json.loads(path.read_text())


def _write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    staging.replace(path)
