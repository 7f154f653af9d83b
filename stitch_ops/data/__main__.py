"""``python -m stitch_ops.data {prepare,split,convert}``: the data stages of ``dvc.yaml``.

- ``prepare``: a pair's two source datasets, generated (``source: synthetic``) or copied from
  two existing nnU-Net raw datasets after checking they are compatible;
- ``split``: the paper's six-part split into working nnU-Net raw datasets (test part in
  ``imagesTs``/``labelsTs``, five folds in ``splits_final.json``);
- ``convert``: public layouts (Kvasir-SEG/HyperKvasir, CVC-ClinicDB, NIfTI folders) into
  nnU-Net raw datasets that ``prepare`` can point at.

A thin shell over :mod:`stitch_ops.data.stages` and :func:`stitch_ops.data.converters.convert`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import Params
from stitch_ops.data.converters import LAYOUTS
from stitch_ops.warm_start import stage_main

logger = logging.getLogger("stitch_ops.data")


def prepare(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.data import stages

    stages.prepare(args.pair, params, progress=args.progress)


def split(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.data import stages

    stages.split(args.pair, params)


def convert(args: argparse.Namespace, params: Params | None) -> None:
    """Convert into ``target``, beside any files it holds (a same-named file is refused unless
    ``--overwrite``); never into the source."""
    from stitch_ops.outputs import check_out_folder, files_beside, refuse_existing

    check_out_folder(args.target, {"source": args.source, "--labels": args.labels}, option="target")
    refuse_existing(args.target, ["dataset.json"], args.overwrite, option="target")  # an earlier conversion
    from stitch_ops.data.converters import convert as run

    with files_beside(args.target, overwrite=args.overwrite, option="target") as staging:
        run(args.layout, args.source, staging, labels=args.labels, video_table=args.video_table,
            label_name=args.label_name, image_size=args.image_size, progress=args.progress)
    logger.info("wrote nnU-Net raw dataset %s; point params data.<pair>.source.<party> at it", args.target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    for name, summary in (("prepare", "write the pair's two source datasets (generate or copy)"),
                          ("split", "six-part split into working nnU-Net raw datasets + folds")):
        command = commands.add_parser(name, parents=[common], help=summary)
        command.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    conv = commands.add_parser("convert", parents=[common], help="convert a public dataset layout "
                               "into an nnU-Net raw dataset")
    conv.add_argument("layout", choices=LAYOUTS,
                      help="kvasir: images/*.jpg + masks/*.jpg; cvc-clinicdb: 'Original/' + "
                           "'Ground Truth/' + a frame,video table; nifti: a folder of images "
                           "and one of labels with the same file names")
    conv.add_argument("source", type=Path, help="the dataset folder (for nifti: the images folder)")
    conv.add_argument("target", type=Path, help="output folder, named like Dataset010_Kvasir")
    conv.add_argument("--labels", type=Path, help="nifti: the labels folder")
    conv.add_argument("--video-table", type=Path, help="cvc-clinicdb: CSV with columns frame,video")
    conv.add_argument("--label-name", default="foreground", help="nifti: name of label 1")
    conv.add_argument("--overwrite", action="store_true", help="replace files of the same name in target "
                      "(other files there are kept)")
    conv.add_argument("--image-size", type=int, help="kvasir/cvc-clinicdb: resize frames to this many "
                      "pixels on a side (full-size frames make CPU planning and training slow)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_command(parser, argv, {"prepare": prepare, "split": split, "convert": convert},
                       without_params=("convert",))


if __name__ == "__main__":
    sys.exit(stage_main(main))
