"""``python -m stitch_ops.data {prepare,split,convert}``: the data stages of ``dvc.yaml``.

- ``prepare``: a pair's two source datasets, generated (``source: synthetic``) or copied from
  two existing nnU-Net raw datasets after checking they are compatible;
- ``split``: the paper's six-part split into working nnU-Net raw datasets (test part in
  ``imagesTs``/``labelsTs``, five folds in ``splits_final.json``);
- ``convert``: public layouts (Kvasir-SEG/HyperKvasir, CVC-ClinicDB, NIfTI folders) into
  nnU-Net raw datasets that ``prepare`` can point at.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import PARTIES, Params
from stitch_ops.errors import UserError
from stitch_ops.paths import PairPaths, dataset_name

logger = logging.getLogger("stitch_ops.data")


def prepare(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.data.raw import check_compatible, validate_raw_dataset
    from stitch_ops.data.synthetic import generate_pair

    pair = params.pair(args.pair)
    target = PairPaths(args.pair).source
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    if pair.is_synthetic:
        logger.info("generating the synthetic %s pair: %s cases", args.pair, dict(pair.cases))
        generate_pair(args.pair, staging, pair.cases, params.seed, image_size=pair.image_size,
                      progress=args.progress)
    else:
        infos = {party: validate_raw_dataset(Path(pair.source[party])) for party in PARTIES}
        check_compatible(infos["a"], infos["b"])
        for party in PARTIES:
            logger.info("copying party %s of %s from %s", party, args.pair, pair.source[party])
            shutil.copytree(Path(pair.source[party]), staging / party)
    for party in PARTIES:
        validate_raw_dataset(staging / party)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def split(args: argparse.Namespace, params: Params) -> None:
    from stitch_ops.data.splits import split_raw_dataset

    params.pair(args.pair)
    paths = PairPaths(args.pair)
    for party in PARTIES:
        record = split_raw_dataset(paths.source / party, paths.raw_root / dataset_name(args.pair, party),
                                   params.seed)
        logger.info("%s party %s (%s split): %d test cases, validation parts of %s cases", args.pair,
                    party, record.method.value, len(record.test_cases), [len(f.val) for f in record.folds])


def convert(args: argparse.Namespace, params: Params | None) -> None:
    from stitch_ops.data import converters

    if args.layout == "kvasir":
        out = converters.convert_kvasir(args.source, args.target, image_size=args.image_size,
                                        progress=args.progress)
    elif args.layout == "cvc-clinicdb":
        out = converters.convert_cvc_clinicdb(args.source, args.target, args.video_table,
                                              image_size=args.image_size, progress=args.progress)
    else:
        if args.labels is None:
            raise UserError("nifti conversion needs --labels, the folder of label volumes")
        out = converters.convert_nifti_folder(args.source, args.labels, args.target, args.label_name,
                                              progress=args.progress)
    logger.info("wrote nnU-Net raw dataset %s; point params data.<pair>.source.<party> at it", out)


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
    conv.add_argument("layout", choices=("kvasir", "cvc-clinicdb", "nifti"),
                      help="kvasir: images/*.jpg + masks/*.jpg; cvc-clinicdb: 'Original/' + "
                           "'Ground Truth/' + a frame,video table; nifti: a folder of images "
                           "and one of labels with the same file names")
    conv.add_argument("source", type=Path, help="the dataset folder (for nifti: the images folder)")
    conv.add_argument("target", type=Path, help="output folder, named like Dataset010_Kvasir")
    conv.add_argument("--labels", type=Path, help="nifti: the labels folder")
    conv.add_argument("--video-table", type=Path, help="cvc-clinicdb: CSV with columns frame,video")
    conv.add_argument("--label-name", default="foreground", help="nifti: name of label 1")
    conv.add_argument("--image-size", type=int, help="kvasir/cvc-clinicdb: resize frames to this many "
                      "pixels on a side (full-size frames make CPU planning and training slow)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_command(parser, argv, {"prepare": prepare, "split": split, "convert": convert},
                       without_params=("convert",))


if __name__ == "__main__":
    sys.exit(main())
