"""``python -m stitch_ops.nnunet {plan,train,predict}``: the nnU-Net stages of ``dvc.yaml``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, Params
from stitch_ops.paths import PARTY_DATASET_IDS, PairPaths, dataset_name

logger = logging.getLogger("stitch_ops.nnunet")

LOCAL = "local"
PREDICTION_SETS = ("test_a", "test_b", "val")


def plan(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.nnunet.env import NnUNetRoots, configure
    from stitch_ops.nnunet.plan import plan_and_preprocess

    paths = PairPaths(args.pair)
    params.pair(args.pair)
    root = paths.preprocessed_root(args.party)
    configure(NnUNetRoots(raw=paths.raw_root, preprocessed=root))
    plan_and_preprocess(PARTY_DATASET_IDS[args.party], root, paths.raw_dataset(args.party),
                        params.nnunet.configuration, progress=args.progress)


def train(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.budget import BUDGET_JSON, write_budget
    from stitch_ops.nnunet.train import TrainingRun, train_fold, training_budget

    paths = PairPaths(args.pair)
    params.pair(args.pair)
    run = TrainingRun(dataset_name(args.pair, args.party), paths.preprocessed_root(args.party),
                      paths.model_dir(LOCAL, args.party, args.fold), args.fold, params.nnunet,
                      seed=params.seed)
    logger.info("training %s fold %d: %d epochs x %d iterations", run.dataset_name, args.fold,
                params.nnunet.epochs, params.nnunet.iterations_per_epoch)
    from stitch_ops.tracking.curves import TRAINING_LOG, publish_curve
    from stitch_ops.tracking.datasets import DataInput
    from stitch_ops.tracking.live import training_run

    with training_run(pair=args.pair, approach=LOCAL, trained_on=args.party, fold=args.fold,
                      dvc_stage=f"train@{args.pair}-{args.party}-{args.fold}", profile=params.profile,
                      inputs=[DataInput(f"{args.pair}/{args.party}/train", run.preprocessed_root, "training")],
                      params={f"nnunet.{k}": v for k, v in vars(params.nnunet).items()}) as live:
        train_fold(run, progress=args.progress, on_epoch=live.log_epoch,
                   provenance={"pair": args.pair, "approach": LOCAL, "trained_on": args.party})
    publish_curve(run.results_root / TRAINING_LOG, paths.training_curve(LOCAL, args.party, args.fold))
    write_budget(paths.metrics(LOCAL, args.party, args.fold) / BUDGET_JSON, training_budget(run))


def validation_cases(paths: PairPaths, party: str, fold: int) -> list[str]:
    """The validation cases of ``fold`` in a party's split (``splits_final.json``)."""
    splits = json.loads((paths.raw_dataset(party) / "splits_final.json").read_text())
    return list(splits[fold]["val"])


def predict(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.nnunet.model import load_model
    from stitch_ops.nnunet.predict import predict_folder

    paths = PairPaths(args.pair)
    params.pair(args.pair)
    model = load_model(paths.model_dir(args.approach, args.trained_on, args.fold) / "export")
    out = paths.predictions(args.approach, args.trained_on, args.fold)
    for name in args.sets:
        if name == "val":
            images = paths.raw_dataset(args.trained_on) / "imagesTr"
            cases = validation_cases(paths, args.trained_on, args.fold)
        else:
            images, cases = paths.raw_dataset(name.removeprefix("test_")) / "imagesTs", None
        predict_folder(model, images, out / name, cases=cases, device=params.nnunet.device,
                       mirroring=params.nnunet.mirroring, progress=args.progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops nnunet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    party = argparse.ArgumentParser(add_help=False)
    party.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    party.add_argument("--party", required=True, choices=PARTIES)

    commands.add_parser("plan", parents=[common, party],
                        help="fingerprint, plan and preprocess a party's dataset (2-D configuration)")
    train_cmd = commands.add_parser("train", parents=[common, party],
                                    help="train one fold on a party's own data (approach 'local'); "
                                         "resumes an interrupted run of the same configuration")
    train_cmd.add_argument("--fold", type=int, required=True, choices=range(5))

    predict_cmd = commands.add_parser("predict", parents=[common],
                                      help="segment both parties' test sets (and the fold's "
                                           "validation cases) with a trained model; keeps softmax .npz")
    predict_cmd.add_argument("--pair", required=True)
    predict_cmd.add_argument("--approach", default=LOCAL, help="approach slug (default: %(default)s)")
    predict_cmd.add_argument("--trained-on", required=True, help="party whose model it is, e.g. a")
    predict_cmd.add_argument("--fold", type=int, required=True, choices=range(5))
    predict_cmd.add_argument("--sets", nargs="+", choices=PREDICTION_SETS, default=list(PREDICTION_SETS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"plan": plan, "train": train, "predict": predict})


if __name__ == "__main__":
    sys.exit(main())
