"""The task commands: ``stitch-ops stitch`` and ``stitch-ops predict``.

For people who share models (DESIGN.md, "Two kinds of command"): they take models as a
user has them (this project's bundles, nnU-Net results folders, nnU-Net export zips) and
folders of images, and need no pipeline checkout or ``params.yaml``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from stitch_ops.approaches import StitchMethod
from stitch_ops.cli_common import one_line_usage_errors, report_errors, setup_logging

MODEL_HELP = ("a bundle exported by stitch-ops (folder or .zip), an nnU-Net results folder "
              "<Trainer>__<Plans>__<configuration>, or a zip from nnUNetv2_export_model_to_zip")


def _fold(value: str) -> int | str:
    return value if value == "all" else int(value)


def _with_task_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options both task commands share (device, trust, progress, logging, tracebacks)."""
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--trust", action="store_true",
                        help="allow plans naming architectures outside dynamic_network_architectures")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return one_line_usage_errors(parser)


def stitch_parser() -> argparse.ArgumentParser:
    from stitch_ops.stitching.task import quick_schedule

    quick = quick_schedule()
    parser = argparse.ArgumentParser(
        prog="stitch-ops stitch",
        description="Stitch your own nnU-Net with another party's model, training the stitches on your own "
                    "unlabeled images; export the stitch-ensemble as a MONAI bundle. Schedule defaults: the "
                    "quick profile.")
    parser.add_argument("--own", type=Path, required=True, help=f"your model: {MODEL_HELP}")
    parser.add_argument("--other", type=Path, required=True, help="the model you received (same forms)")
    parser.add_argument("--images", type=Path, required=True,
                        help="your images, nnU-Net naming {case}_0000.png|.nii.gz (labels never read)")
    parser.add_argument("--labels", type=Path,
                        help="labels {case}.png|.nii.gz for some of the images: positions are scored on them "
                             "(strategy 1); without, the rule-of-thumb position is used (--rule-of-thumb)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--method", choices=[m.value for m in StitchMethod], default=StitchMethod.DOUBLE_BATCHED.value)
    parser.add_argument("--epochs", type=int, default=quick.get("epochs", 2))
    parser.add_argument("--iterations-per-epoch", type=int, default=quick.get("iterations_per_epoch", 20))
    parser.add_argument("--batch-size", type=int, default=quick.get("batch_size", 4))
    parser.add_argument("--lr", type=float, default=quick.get("lr", 1e-3))
    parser.add_argument("--max-positions", type=int, default=quick.get("max_positions", 6),
                        help="positions scored with --labels, evenly spread (default: %(default)s)")
    parser.add_argument("--rule-of-thumb", type=Path, metavar="SELECTION_JSON",
                        help="without --labels: take strategy 3's position (matches after the last skip "
                             "concatenation) from a pipeline run's metrics/<pair>/stitch/<slug>/fold_0/selection.json "
                             "(default: the one this package ships, measured on the quick profile)")
    parser.add_argument("--own-fold", type=_fold, help="the fold of a multi-fold own model")
    parser.add_argument("--other-fold", type=_fold, help="the fold of a multi-fold other model")
    parser.add_argument("--seed", type=int, default=0)
    return _with_task_options(parser)


def stitch_main(argv: Sequence[str] | None = None) -> int:
    from stitch_ops.stitching.task import StitchTask, format_summary, run

    args = stitch_parser().parse_args(argv)
    setup_logging(args.verbose)
    task = StitchTask(own=args.own, other=args.other, images=args.images, out=args.out, labels=args.labels,
                      method=args.method, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                      batch_size=args.batch_size, lr=args.lr, max_positions=args.max_positions,
                      rule_of_thumb=args.rule_of_thumb, own_fold=args.own_fold, other_fold=args.other_fold, seed=args.seed, device=args.device,
                      trust=args.trust)
    return report_errors("stitch-ops stitch", lambda: print(format_summary(run(task, progress=args.progress))),
                         debug=args.debug)


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops predict",
                                     description="Segment a folder of images with any model, through "
                                                 "nnU-Net's predictor (sliding window, the model's plans).")
    parser.add_argument("--model", type=Path, required=True, help=f"{MODEL_HELP}, or a stitch-ensemble bundle")
    parser.add_argument("--input", type=Path, required=True, help="images named {case}_0000.png|.nii.gz")
    parser.add_argument("--out", type=Path, required=True, help="segmentations {case}.png|.nii.gz")
    parser.add_argument("--fold", type=_fold, help="one fold (default: every fold present, averaged as nnU-Net does)")
    parser.add_argument("--save-probabilities", action="store_true", help="also write {case}.npz probabilities")
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (slower)")
    return _with_task_options(parser)


def predict(model: Path, images: Path, out: Path, *, fold: int | str | None = None, save_probabilities: bool = False,
            mirroring: bool = False, device: str = "auto", trust: bool = False, progress: bool = True) -> Path:
    """Segment every case of ``images`` with ``model`` (any source) into ``out``, atomically."""
    from stitch_ops.bundle.sources import open_model
    from stitch_ops.nnunet.predict import predict_folder

    opened = open_model(model, fold, trusted=trust)
    return predict_folder(opened, images, out, save_probabilities=save_probabilities, device=device,
                          mirroring=mirroring and opened.mirroring_axes is not None, progress=progress)


def predict_main(argv: Sequence[str] | None = None) -> int:
    args = predict_parser().parse_args(argv)
    setup_logging(args.verbose)

    def action() -> None:
        out = predict(args.model, args.input, args.out, fold=args.fold, save_probabilities=args.save_probabilities,
                      mirroring=args.mirroring, device=args.device, trust=args.trust, progress=args.progress)
        print(f"{out}: {len(list(out.glob('*')))} file(s) written")

    return report_errors("stitch-ops predict", action, debug=args.debug)
