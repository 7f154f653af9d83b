"""``stitch-ops bundle {export,verify,definitions}``: trained MONAI bundles out, received bundles checked,
the bundle definitions' metadata and train.json values written from one template and the default profile."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from stitch_ops.approaches import Approach
from stitch_ops.cli_common import common_options, run_command
from stitch_ops.config import Params, load_params
from stitch_ops.errors import UserError
from stitch_ops.paths import bundle_definition
from stitch_ops.warm_start import stage_main

logger = logging.getLogger("stitch_ops.bundle")


def export(args: argparse.Namespace, params: Params | None) -> None:
    from stitch_ops.bundle.export import ExportInfo, export_bundle, export_pipeline_model, flat_metrics
    from stitch_ops.bundle.sources import open_model

    if args.model is not None:
        if args.out is None:
            raise UserError("--model needs --out DIR: where to write the bundle (and DIR.zip)")
        archive = args.out.with_name(args.out.name + ".zip")
        checked = ((args.out, "folder", Path.is_dir),) + (() if args.no_zip else ((archive, "file", Path.is_file),))
        for path, kind, is_kind in checked:
            if path.exists() and not is_kind(path):
                raise UserError(f"--out {args.out}: {path} exists and is not a {kind}; choose another --out or "
                                f"move it away (nothing was written)")
        check_bundle_target(args.out, args.model, overwrite=args.overwrite, make_zip=not args.no_zip)
        model = open_model(args.model, args.fold, trusted=args.trust)
        info = ExportInfo(approach=args.approach or "nnunet",
                          trained_on=args.trained_on or "the exporting institution's own data",
                          eval_metrics=flat_metrics(args.metrics))
        definition = bundle_definition(info.approach)
        target = export_bundle(model, args.out, info, definition=definition, make_zip=not args.no_zip)
        print(f"{target}: MONAI bundle of {model.description}" + ("" if args.no_zip else f"; zip {target}.zip"))
        return
    if args.pair is None or args.trained_on is None or args.fold is None:
        raise UserError("pass --model MODEL --out DIR (any model), or --pair, --trained-on and --fold "
                         "(a model of the pipeline)")
    target = export_pipeline_model(args.pair, args.approach or Approach.LOCAL.value, args.trained_on, args.fold,
                                   load_params(args.params), make_zip=not args.no_zip)
    logger.info("trained bundle written to %s", target)


def check_bundle_target(out: Path, model: Path, *, overwrite: bool, make_zip: bool) -> None:
    """Refuse, before any work, a bundle target that would replace files the export did not write.

    A bundle is written whole (its manifest covers every file), so ``--out`` must be a new or
    empty folder; with ``--overwrite`` it may also be an earlier bundle holding nothing but the
    files its manifest lists (it is replaced whole); ``OUT.zip`` is replaced only with ``--overwrite``.

    Raises:
        OutputExistsError: naming what is in the way and the fix.
    """
    from stitch_ops.bundle.export import MANIFEST
    from stitch_ops.cli_common import check_model_path
    from stitch_ops.outputs import OutputExistsError, check_out_folder

    check_model_path(model, "--model")
    check_out_folder(out, {"--model": model})
    archive = out.with_name(out.name + ".zip")
    if make_zip and (archive.is_dir() or (archive.exists() and not overwrite)):
        raise OutputExistsError(f"{archive} exists, where the bundle's zip goes; choose another --out"
                                + ("" if archive.is_dir() else ", or pass --overwrite to replace it"))
    if not out.is_dir() or not any(out.iterdir()):
        return
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    listed = set()
    if (out / MANIFEST).is_file():
        listed = {line.split("  ", 1)[1] for line in (out / MANIFEST).read_text().splitlines() if "  " in line}
        listed.add(MANIFEST)
    foreign = [f for f in files if f not in listed]
    if foreign:
        raise OutputExistsError(f"--out {out} holds files that are not part of a bundle ({', '.join(foreign[:5])}"
                                f"{' ...' if len(foreign) > 5 else ''}); a bundle is written whole: choose a new "
                                f"or empty folder")
    if not overwrite:
        raise OutputExistsError(f"--out {out} holds a bundle already; choose another --out, or pass --overwrite to "
                                f"replace it")


def verify(args: argparse.Namespace, params: Params | None) -> None:
    from stitch_ops.bundle.verify import verify_bundle

    report = verify_bundle(args.bundle, trust=args.trust)
    if report.kind == "MONAI bundle":
        print(f"{report.path}: MONAI bundle '{report.metadata.get('name', '?')}' version "
              f"{report.metadata['version']}: metadata matches the schema; {report.files_checked} file(s) match the "
              f"manifest (a checksum list, not a signature); configs {report.configs} run only stitch_ops' workflow "
              f"functions"
              + (f"; network loads as plain weights and maps the declared input to {report.output_shape}"
                 if report.models else "; no trained model")
              + (f"; trusted code: {report.code}" if report.code else ""))
    else:
        print(f"{report.path}: {report.kind} ({report.description}): no code, within the size limits, an allowed "
              f"nnU-Net architecture, weights load as plain data, the network maps a probe input to "
              f"{report.output_shape}" + (f"; trusted code: {report.code}" if report.code else ""))
    print(f"next: {report.next_steps()}")


def definitions(args: argparse.Namespace, params: Params | None) -> None:
    from stitch_ops.bundle.definitions import TEXTS, Plan, stale, write_stale
    from stitch_ops.config import DEFAULT_PROFILE, profile_params
    from stitch_ops.stages.plugin import planned_schedules

    if not (args.root / "bundles").is_dir():
        raise UserError(f"no bundles/ folder in {args.root.resolve()}: run this in the repository root, or pass "
                        f"--root with the checkout")
    default = profile_params(DEFAULT_PROFILE, args.root / "params.yaml")
    plan = Plan(default, planned_schedules(default))
    if args.check:
        differing = stale(args.root, plan)
        if differing:
            raise UserError(f"not what `stitch-ops bundle definitions` writes: {', '.join(map(str, differing))}; "
                            f"run it (without --check) and commit the result")
        print(f"the {len(TEXTS)} bundle definitions are current (values: profile {DEFAULT_PROFILE})")
        return
    written = write_stale(args.root, plan)
    print(f"{len(TEXTS)} bundle definitions (values: profile {DEFAULT_PROFILE}), {len(written)} files rewritten"
          + "".join(f"\n  {p}" for p in written))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitch-ops bundle", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    exp = commands.add_parser("export", parents=[common],
                              help="write a trained model as a MONAI bundle folder and .zip")
    exp.add_argument("--model", type=Path,
                     help="any model: a bundle, an nnU-Net results folder or export zip, an exported folder")
    exp.add_argument("--out", type=Path, help="with --model: the bundle folder to write (and OUT.zip)")
    exp.add_argument("--pair", help="pipeline mode: export models/<pair>/<approach>/<trained-on>/fold_<k>")
    exp.add_argument("--approach", help="the approach, e.g. local, finetune, stitch (default: local in "
                                         "pipeline mode, nnunet with --model)")
    exp.add_argument("--trained-on", help="pipeline mode: the party/slug; with --model: a description of "
                                          "the training data (never case ids)")
    exp.add_argument("--fold", help="one nnU-Net fold (default with --model: every fold present)",
                     type=lambda v: v if v == "all" else int(v))
    exp.add_argument("--metrics", type=Path, help="with --model: a summary.json of validation metrics")
    exp.add_argument("--no-zip", action="store_true", help="write the folder only")
    exp.add_argument("--overwrite", action="store_true", help="with --model: replace a bundle already at --out "
                                                              "(and OUT.zip); any other file there is refused")
    exp.add_argument("--trust", action="store_true", help="allow plans naming classes outside nnU-Net's "
                                                          "architectures and torch's layers (their code runs)")
    ver = commands.add_parser("verify", parents=[common],
                              help="check a model received from someone else before using it: a bundle (folder or "
                                   ".zip), an nnU-Net results folder or export zip")
    ver.add_argument("bundle", type=Path, help="the bundle or model received")
    ver.add_argument("--trust", action="store_true",
                     help="accept code: configs naming other callables or expressions, unexpected files, plans "
                          "naming classes outside nnU-Net's architectures and torch's layers")
    defs = commands.add_parser("definitions", parents=[common],
                               help="write bundles/<approach>/configs/metadata.json from one template "
                                    "(stitch_ops/bundle/definitions.py) and the values of train.json from the "
                                    "default profile's schedules, or --check that they are current")
    defs.add_argument("--check", action="store_true",
                      help="write nothing; fail naming the files that differ (what the tests check)")
    defs.add_argument("--root", type=Path, default=Path("."),
                      help="the checkout whose bundles/ to write (default: the current folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, {"export": export, "verify": verify, "definitions": definitions},
                       without_params=("verify", "export", "definitions"))


if __name__ == "__main__":
    sys.exit(stage_main(main))
