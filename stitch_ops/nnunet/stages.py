"""One typed function per nnU-Net stage of ``dvc.yaml``; ``__main__`` is a thin shell over these.

- :func:`plan`: fingerprint, plan and preprocess a party's working dataset;
- :func:`train`: one fold of a party's basis model (approach ``local``), resumable;
- :func:`predict`: segment both parties' test sets (and the fold's validation cases) with
  any exported model, keeping the softmax for ensembles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stitch_ops import approaches
from stitch_ops.config import PARTIES, Params
from stitch_ops.paths import PARTY_DATASET_IDS, VALIDATION_SET, PairPaths, dataset_name, dvc_stage, test_set

logger = logging.getLogger(__name__)

PREDICTION_SETS = (*(test_set(p) for p in PARTIES), VALIDATION_SET)


def plan(pair: str, party: str, params: Params, *, root: Path = Path("."), progress: bool = True) -> Path:
    """Plan and preprocess ``party``'s working dataset of ``pair`` with its own plans."""
    from stitch_ops.nnunet.env import NnUNetRoots, configure
    from stitch_ops.nnunet.plan import plan_and_preprocess

    paths = PairPaths(pair, root)
    params.pair(pair)
    preprocessed = paths.preprocessed_root(party)
    configure(NnUNetRoots(raw=paths.raw_root, preprocessed=preprocessed))
    return plan_and_preprocess(PARTY_DATASET_IDS[party], preprocessed, paths.raw_dataset(party),
                               params.nnunet.configuration, intensity_samples=params.nnunet.intensity_samples,
                               progress=progress)


def train(pair: str, party: str, fold: int, params: Params, *, root: Path = Path("."),
          progress: bool = True) -> Path:
    """Train ``party``'s basis model (approach ``local``) on its own data and write its
    ``budget.json``; returns the export folder."""
    from stitch_ops.budget import BUDGET_JSON, write_budget
    from stitch_ops.nnunet.train import TrainingRun, train_fold, training_budget

    paths = PairPaths(pair, root)
    params.pair(pair)
    model = approaches.local(party)
    run = TrainingRun(dataset_name(pair, party), paths.preprocessed_root(party),
                      paths.model_dir(model.approach, model.trained_on, fold), fold, params.nnunet, seed=params.seed)
    logger.info("training %s fold %d: %d epochs x %d iterations", run.dataset_name, fold,
                params.nnunet.epochs, params.nnunet.iterations_per_epoch)
    from stitch_ops.tracking.curves import TRAINING_LOG, publish_curve
    from stitch_ops.tracking.datasets import DataInput
    from stitch_ops.tracking.live import training_run

    with training_run(pair=pair, approach=model.approach, trained_on=model.trained_on, fold=fold,
                      dvc_stage=dvc_stage("train", pair, party, fold), profile=params.profile, root=root,
                      inputs=[DataInput(f"{pair}/{party}/train", run.preprocessed_root, "training")],
                      params={f"nnunet.{k}": v for k, v in vars(params.nnunet).items()}) as live:
        exported = train_fold(run, progress=progress, on_epoch=live.log_epoch, keep_checkpoint=False,
                              provenance={"pair": pair, "approach": model.approach, "trained_on": model.trained_on})
    publish_curve(run.results_root / TRAINING_LOG, paths.training_curve(model.approach, model.trained_on, fold))
    write_budget(paths.metrics(model.approach, model.trained_on, fold) / BUDGET_JSON, training_budget(run))
    return exported


def predict(pair: str, approach: str, trained_on: str, fold: int, params: Params, *,
            sets: Sequence[str] = PREDICTION_SETS, root: Path = Path("."), progress: bool = True) -> Path:
    """Predict ``sets`` (``test_a``, ``test_b``, ``val``) with an exported model into its
    predictions folder; ``val`` is the fold's validation cases of the model's perspective."""
    from stitch_ops.data.splits import read_fold
    from stitch_ops.nnunet.model import load_model
    from stitch_ops.nnunet.predict import predict_folder

    paths = PairPaths(pair, root)
    params.pair(pair)
    model = load_model(paths.model_dir(approach, trained_on, fold) / "export")
    out = paths.predictions(approach, trained_on, fold)
    for name in sets:
        if name == VALIDATION_SET:
            party = approaches.validation_party(approach, trained_on)
            if party is None:
                raise ValueError(f"{approach}/{trained_on} has no validation cases of its own; predict "
                                 f"{[test_set(p) for p in PARTIES]} only")
            images, cases = paths.raw_dataset(party) / "imagesTr", list(read_fold(paths.raw_dataset(party), fold).val)
        else:
            party = next((p for p in PARTIES if test_set(p) == name), None)
            if party is None:
                raise ValueError(f"unknown prediction set {name!r}; expected one of {list(PREDICTION_SETS)}")
            images, cases = paths.raw_dataset(party) / "imagesTs", None
        predict_folder(model, images, out / name, cases=cases, device=params.nnunet.device,
                       mirroring=params.nnunet.mirroring, progress=progress)
    return out
