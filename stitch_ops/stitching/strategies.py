"""Selection strategies 2 and 3 as pipeline results, and the no-stitch reference.

``reference``: the stitch-ensemble's two parents, both fed c's preprocessing through the same
predictor and averaged with no stitch (the paper's dashed line), predicted on both test sets and
on c's validation cases of the fold, and scored there like any model
(``val_c/dice_mean`` is its score "as a position"). The effect of a stitch is the difference to
it at equal preprocessing.

``strategies``: after every position of every stitch network has been scored on validation
cases (the ``scores/`` tree that ``select`` writes), apply selection strategies 1, 2 and 3
(:mod:`stitch_ops.evaluation.selection`) to one network at one fold and write, per the
contract in docs/ARCHITECTURE.md, ``metrics/{pair}/stitch/{slug}/fold_k/``:
``positions.csv`` (the scored positions with one ``selected*`` column per strategy; strategy 3
pools positions by ``from_last_merge``, their place relative to the last skip concatenation),
``no_stitch.json`` (the reference's validation means) and ``selection.json``. The
stitch-ensembles chosen by strategies 2 and 3 are predicted on both test sets (slugs
``{slug}_all_folds`` and ``{slug}_rule_of_thumb``) and scored like any model, in the same
process (their ``metrics/`` folders and MLflow runs); a strategy that picks the k another
already predicted reuses those predictions instead of running the same network again.
Selection reads no test label: it sees only the validation means in ``scores/``; the test
labels are read afterwards, to score the stitch-ensembles it chose.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from stitch_ops import approaches
from stitch_ops.approaches import SELECTION_STRATEGIES, Approach
from stitch_ops.config import PARTIES, Params
from stitch_ops.data.splits import read_fold
from stitch_ops.errors import InputFileError
from stitch_ops.evaluation.selection import STRUCTURAL, select_strategies
from stitch_ops.evaluation.stages import evaluate
from stitch_ops.nnunet.model import NnUNetModel, load_model
from stitch_ops.nnunet.predict import predict_folder
from stitch_ops.outputs import copy_dir, output_dir, read_json, write_json, write_table
from stitch_ops.paths import VALIDATION_SET, PairPaths, dvc_stage, test_set
from stitch_ops.stitching import extract_stitch_ensemble
from stitch_ops.stitching.artifacts import basis_export, load_trained_network, parent_dirs, stage_name
from stitch_ops.stitching.ensemble import TwoModelEnsemble

logger = logging.getLogger(__name__)

APPROACH = Approach.STITCH


def reference(params: Params, pair: str, c: str, fold: int, progress: bool = True, finetuned: bool = False) -> Path:
    """Predict the no-stitch reference of the stitch networks trained on c's data: both test
    sets and c's validation cases, into ``predictions/{pair}/stitch/no_stitch_via_c[...]/fold_k``,
    and score it like any model (in this process: a stage of its own cost more start-up than work)."""
    paths = PairPaths(pair)
    folders = parent_dirs(paths, c, fold, finetuned)
    parents = [load_model(folder) for folder in folders]
    own = parents[PARTIES.index(c)]  # c's basis model: its plans feed the ensemble
    model = approaches.no_stitch(c, finetuned)
    logger.info("%s fold %d: no-stitch reference %s = parents %s, fed party %s's preprocessing",
                pair, fold, model.shorthand, [str(f) for f in folders], c)
    ensemble = NnUNetModel(TwoModelEnsemble(parents[0].network, parents[1].network), own.plans, own.dataset_json,
                           own.configuration, None, f"no-stitch reference {model.shorthand}")
    out = paths.predictions(model.approach, model.trained_on, fold)
    with output_dir(out) as staging:
        _predict_sets(ensemble, paths, c, fold, staging, params.nnunet.device, progress)
    evaluate(pair, model.approach.value, model.trained_on, fold, params, progress=progress,
             stage=dvc_stage(stage_name("stitch_reference", finetuned), pair, c, fold))
    return out


def _predict_sets(model: Any, paths: PairPaths, c: str, fold: int, out: Path, device: str, progress: bool) -> None:
    """Both parties' test sets and c's validation cases of ``fold``, like every evaluated model."""
    for party in PARTIES:
        predict_folder(model, paths.raw_dataset(party) / "imagesTs", out / test_set(party), device=device,
                       progress=progress)
    raw = paths.raw_dataset(c)
    predict_folder(model, raw / "imagesTr", out / VALIDATION_SET, cases=list(read_fold(raw, fold).val),
                   device=device, progress=progress)


def read_scores(root: Path = Path(".")) -> pd.DataFrame:
    """Every scored position table under ``scores/{pair}/stitch/{slug}/fold_k/positions.csv``,
    with ``pair``, ``slug`` and ``fold`` columns added (validation means only)."""
    tables = []
    for path in sorted((root / "scores").glob(f"*/{APPROACH.value}/*/fold_*/positions.csv")):
        fold_dir, slug_dir, pair_dir = path.parent, path.parent.parent, path.parent.parent.parent.parent
        tables.append(pd.read_csv(path).assign(pair=pair_dir.name, slug=slug_dir.name,
                                               fold=int(fold_dir.name.removeprefix("fold_"))))
    if not tables:
        raise InputFileError(f"no scored positions under {root / 'scores'}: run the stitch_select stages first")
    return pd.concat(tables, ignore_index=True)


def strategies(params: Params, pair: str, c: str, method: str, fold: int, progress: bool = True,
               finetuned: bool = False, root: Path = Path(".")) -> dict[str, Any]:
    """The ``stitch_strategies`` stage: :func:`choose_and_predict`, then score the
    stitch-ensembles of strategies 2 and 3 like any model (``cases.csv``, ``summary.json``,
    their MLflow runs). Scoring happens here rather than in a stage of its own because a
    separate process per strategy spent most of its time importing MONAI, torch and MLflow.
    Returns the ``selection.json`` record."""
    selection = choose_and_predict(params, pair, c, method, fold, progress, finetuned, root)
    stage = dvc_stage(stage_name("stitch_strategies", finetuned), pair, c, method, fold)
    for strategy in SELECTION_STRATEGIES[1:]:
        model = approaches.stitch_ensemble(c, method, finetuned, strategy)
        evaluate(pair, APPROACH.value, model.trained_on, fold, params, stage=stage, root=root, progress=progress)
    return selection


def choose_and_predict(params: Params, pair: str, c: str, method: str, fold: int, progress: bool = True,
                       finetuned: bool = False, root: Path = Path(".")) -> dict[str, Any]:
    """Apply strategies 1-3 to one stitch network at ``fold`` (reading validation means only);
    write the metrics files and the predictions of the strategies' stitch-ensembles. Returns
    the ``selection.json`` record."""
    paths = PairPaths(pair, root)
    slug = approaches.stitch_ensemble(c, method, finetuned).trained_on
    selection = select_strategies(read_scores(root), (pair, slug), fold, coordinate=STRUCTURAL)
    for strategy, choice in selection.items():
        logger.info("%s %s fold %d, %s: k=%d (relative position %.3f, %+d matches from the last skip)%s", pair,
                    slug, fold, strategy, choice["k"], choice["relative_position"], choice[STRUCTURAL],
                    f" - {choice['note']}" if "note" in choice else "")

    positions = pd.read_csv(paths.scores(APPROACH, slug, fold) / "positions.csv")
    positions["selected"] = positions["k"] == selection[SELECTION_STRATEGIES[0]]["k"]
    for strategy in SELECTION_STRATEGIES[1:]:
        positions[f"selected_{strategy}"] = positions["k"] == selection[strategy]["k"]
    reference_model = approaches.no_stitch(c, finetuned)
    summary = read_json(paths.metrics(APPROACH, reference_model.trained_on, fold) / "summary.json",
                        hint="score the no-stitch reference first (stitch_reference stage)")
    no_stitch_means = {"dice": summary[f"{VALIDATION_SET}_{c}/dice_mean"],
                       "hd95": summary[f"{VALIDATION_SET}_{c}/hd95_mean"]}

    first = SELECTION_STRATEGIES[0]
    predicted = {selection[first]["k"]: (first, paths.predictions(APPROACH, slug, fold))}
    for strategy in SELECTION_STRATEGIES[1:]:
        k = selection[strategy]["k"]
        model = approaches.stitch_ensemble(c, method, finetuned, strategy)
        target = paths.predictions(APPROACH, model.trained_on, fold)
        if k in predicted:
            earlier, folder = predicted[k]
            logger.info("%s selects k=%d like %s: reusing its predictions %s", strategy, k, earlier, folder)
            copy_dir(folder, target)
            selection[strategy]["same_k_as"] = earlier
        else:
            _predict_position(params, paths, c, method, finetuned, fold, k, target, progress)
            predicted[k] = (strategy, target)

    out = paths.metrics(APPROACH, slug, fold)
    write_table(out / "positions.csv", positions)
    write_json(out / "no_stitch.json", no_stitch_means)
    write_json(out / "selection.json", selection)
    return selection


def _predict_position(params: Params, paths: PairPaths, c: str, method: str, finetuned: bool, fold: int, k: int,
                      target: Path, progress: bool) -> None:
    """Predict both test sets and c's validation cases with the stitch-ensemble at ``k``."""
    network = load_trained_network(paths, c, method, fold, finetuned)
    own = load_model(basis_export(paths, c, fold))
    ensemble = NnUNetModel(extract_stitch_ensemble(network, k), own.plans, own.dataset_json, own.configuration,
                           None, f"stitch-ensemble k={k}")
    with output_dir(target) as staging:
        _predict_sets(ensemble, paths, c, fold, staging, params.nnunet.device, progress)
