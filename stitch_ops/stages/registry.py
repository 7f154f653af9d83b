"""Every stage of the pipeline, declared once: what ``stitch-ops dvc-yaml`` writes as ``dvc.yaml``.

Each declaration says what the stage runs (its entry module), over which axes, what it reads
(data deps, params keys) and what it writes (outs, metrics, plots), with the comments that
explain it in ``dvc.yaml``. Its code dep is its record in ``code_digests/``, written by the first
stage (:mod:`stitch_ops.stages.code_digests`) from its entry module's imports. The stitching
stages are declared once for both parents (:class:`~stitch_ops.stages.spec.StitchParents`): the
``*_finetuned`` stages come from the variant. Importing this module is cheap (no torch, nnU-Net or MLflow).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from stitch_ops import approaches, config
from stitch_ops.approaches import Approach, StitchMethod
from stitch_ops.paths import REPORTS, bundle_definition
from stitch_ops.stages import code_digests
from stitch_ops.stages.declare import (C, DEVICE, FOLD, FOLD_NUMBER, FOLDS, METHOD, METHODS, PAIR, PAIRS, PARTIES,
                                       PARTY, PATHS, RAW, ROUTE, SCORES, SEED, curve, metrics, model, predictions,
                                       preprocessed, scored)
from stitch_ops.stages.plugin import plugins
from stitch_ops.stages.spec import Item, Stage, StitchParents, persisted, uncached

HEADER = """\
# The stitch_ops pipeline. Paths follow stitch_ops/paths.py; knobs live in params.yaml.
# Stage names: <stage>@<pair>[-<party>[-<fold>]], e.g. train@polyp-a-0.
# Written by `stitch-ops dvc-yaml` from stitch_ops/stages/registry.py: edit the registry, then
# run it (`make test` fails while this file differs from what it writes).
# `dvc plots show` draws every file below these folders (one chart per model) and the
# stages' own plots (the report's figures); see README "Plots, metrics and experiments".
plots:
  - plots/training:
      x: epoch
      y: [train_loss, val_loss, pseudo_dice]
      title: nnU-Net training curves, per epoch (federated, per round)
  - plots/stitch_training:
      x: epoch
      y: train_loss
      title: stitch training loss (per epoch)
"""


# ---------------------------------------------------------------- the code each stage runs

def code_stage() -> Stage:
    return Stage(code_digests.STAGE, f"stitch_ops.stages.{code_digests.STAGE}", "",
                 deps=[Item(code_digests.PACKAGE, note="every module and data file of the package")],
                 outs=[Item(code_digests.FOLDER.as_posix())],
                 comment="The code each stage below runs (its command's imports, stitch_ops/stages/deps.py), one\n"
                         "record per stage with the MD5 of each file: every stage depends on its own record, so\n"
                         "it reruns when code it runs changes, and dvc.lock lists the package's files once.")


# ---------------------------------------------------------------- data and basis models

def data_stages() -> list[Stage]:
    return [
        Stage("prepare", "stitch_ops.data prepare", f"--pair {PAIR}", {"pair": PAIRS},
              params=[Item("seed"), Item(f"data.{PAIR}")], outs=[Item(PATHS.source.as_posix())]),
        Stage("split", "stitch_ops.data split", f"--pair {PAIR}", {"pair": PAIRS},
              deps=[Item(PATHS.source.as_posix())], params=[Item("seed")], outs=[RAW]),
    ]


def basis_stages() -> list[Stage]:
    local = Approach.LOCAL
    per_model = {"pair": PAIRS, "party": PARTIES, "fold": FOLDS}
    return [
        Stage("plan", "stitch_ops.nnunet plan", f"--pair {PAIR} --party {PARTY}", {"pair": PAIRS, "party": PARTIES},
              deps=[RAW], params=[Item("nnunet.configuration"), Item("nnunet.intensity_samples")],
              outs=[Item(preprocessed(PARTY))]),
        Stage("train", "stitch_ops.nnunet train", f"--pair {PAIR} --party {PARTY} --fold {FOLD}", per_model,
              deps=[Item(preprocessed(PARTY))], params=[SEED, Item("nnunet")],
              outs=[persisted(model(local, PARTY), above="persisted so that a killed run resumes; train.py discards "
                                                         "it if the configuration changed"),
                    uncached(metrics(local, PARTY, "budget.json")),
                    uncached(curve(local, PARTY), above="the training curve, drawn by `dvc plots show` (plots: below)")]),
        Stage("predict", "stitch_ops.nnunet predict", f"--pair {PAIR} --trained-on {PARTY} --fold {FOLD}", per_model,
              deps=[Item(model(local, PARTY)), RAW], params=[DEVICE, Item("nnunet.mirroring")],
              outs=[Item(predictions(local, PARTY))]),
        Stage("evaluate", "stitch_ops.evaluation",
              f"--pair {PAIR} --approach {local} --trained-on {PARTY} --fold {FOLD}", per_model,
              deps=[Item(predictions(local, PARTY)), RAW], outs=[Item(metrics(local, PARTY, "cases.csv"))],
              metrics=[uncached(metrics(local, PARTY, "summary.json"))]),
        Stage("bundle", "stitch_ops.bundle export",
              f"--pair {PAIR} --approach {local} --trained-on {PARTY} --fold {FOLD} --no-zip", per_model,
              deps=[Item(bundle_definition(local).as_posix()), Item(model(local, PARTY)),
                    Item(metrics(local, PARTY, "summary.json")), Item(metrics(local, PARTY, "budget.json"))],
              params=[Item("seed", note="configs/train.json says how the model was trained"), Item("nnunet")],
              outs=[Item(PATHS.export(local, PARTY, FOLD_NUMBER).as_posix())]),
    ]


# ---------------------------------------------------------------- stitching

BASIS = StitchParents("", "${stitching.c_parties}", (), "")
FINETUNED = StitchParents("_finetuned", "${stitching.finetuned_c_parties}",
                          (Path(model(Approach.FINETUNE, ROUTE)).parents[1].as_posix(),), "--finetuned")
BASIS_MODELS = [Item(model(Approach.LOCAL, party)) for party in config.PARTIES]
STITCH = Approach.STITCH
STITCH_NETWORK_ARGS = f"--pair {PAIR} --c {C} --method {METHOD} --fold {FOLD}"


def stitch_slug(parents: StitchParents) -> str:
    """The stitch network's slug (:func:`stitch_ops.approaches.stitch_slug`), templated."""
    return f"via_{C}_{METHOD}{parents.suffix}"


def stitch_axes(parents: StitchParents, *axes: str) -> dict[str, Item]:
    values = {"pair": PAIRS, "c": Item(parents.c_parties), "method": METHODS, "fold": FOLDS}
    return {axis: values[axis] for axis in axes}


def parent_models(parents: StitchParents) -> list[Item]:
    return [*BASIS_MODELS, *map(Item, parents.model_deps)]


def stitch_train(parents: StitchParents) -> Stage:
    slug = stitch_slug(parents)
    comment = ("---- stitching (issue 3) ----\n"
               "a←[c]→b: stitches between the two basis models trained on c's unlabeled images, every\n"
               "position scored on c's validation cases, the selected one evaluated like any model.\n"
               "Each stage has a *_finetuned twin (issue 7): a←[a]→b→a, c's basis model and the other party's\n"
               "model fine-tuned on c's data (the finetune approach's other_to_c model), stitches trained on\n"
               "c's data; slug via_{c}_{method}_finetuned, c from stitching.finetuned_c_parties.")
    return Stage(
        parents.name("stitch_train"), "stitch_ops.stages.stitch_train", parents.args(STITCH_NETWORK_ARGS),
        stitch_axes(parents, "pair", "c", "method", "fold"),
        deps=[*parent_models(parents), Item(preprocessed(C))],
        params=[Item("seed"), Item("stitching.training"),
                Item("stitching.search", note="optuna: a Ray Tune + Optuna search of (k, lr) first; its best lr "
                                              "trains the stitches"),
                *map(Item, ("stitching.trials", "stitching.search_lr_min", "stitching.search_lr_max",
                            "stitching.search_training", "stitching.search_concurrent")), DEVICE],
        outs=[persisted(f"{model(STITCH, slug)}/network",
                        above="persisted so that a killed run resumes from its last epoch (checkpoint.pt)"),
              uncached(metrics(STITCH, slug, "budget.json")), uncached(curve(STITCH, slug))],
        comment=comment if parents is BASIS else "")


def stitch_select(parents: StitchParents) -> Stage:
    slug = stitch_slug(parents)
    return Stage(
        parents.name("stitch_select"), "stitch_ops.stages.stitch_select", parents.args(STITCH_NETWORK_ARGS),
        stitch_axes(parents, "pair", "c", "method", "fold"),
        deps=[Item(f"{model(STITCH, slug)}/network"), *parent_models(parents), RAW],
        params=[Item("stitching.selection"), Item("stitching.max_positions"),
                Item("stitching.search", note="optuna: the search's best k is scored too"), DEVICE],
        outs=[Item(f"{model(STITCH, slug)}/export"), Item(predictions(STITCH, slug)),
              Item((PATHS.scores(STITCH, slug, FOLD_NUMBER) / "positions.csv").as_posix()),
              Item(metrics(STITCH, slug, "cases.csv"))],
        metrics=[uncached(metrics(STITCH, slug, "summary.json"))])


def bundle_stitch(parents: StitchParents) -> Stage:
    slug = stitch_slug(parents)
    return Stage(
        parents.name("bundle_stitch"), "stitch_ops.bundle export",
        f"--pair {PAIR} --approach {STITCH} --trained-on {slug} --fold {FOLD} --no-zip",
        stitch_axes(parents, "pair", "c", "method", "fold"),
        deps=[Item(bundle_definition(STITCH).as_posix()), Item(f"{model(STITCH, slug)}/export"),
              Item(metrics(STITCH, slug, "summary.json"))],
        outs=[Item(PATHS.export(STITCH, slug, FOLD_NUMBER).as_posix())])


def reference_slug(parents: StitchParents) -> str:
    """The no-stitch reference's slug (:func:`stitch_ops.approaches.no_stitch`), templated."""
    return f"no_stitch_via_{C}{parents.suffix}"


def stitch_reference(parents: StitchParents) -> Stage:
    slug = reference_slug(parents)
    comment = ("The no-stitch reference (issue 7): the parents of the stitch networks trained on c's data,\n"
               "both fed c's preprocessing, averaged with no stitch; slug no_stitch_via_{c}[_finetuned].\n"
               "Predicted on both test sets and c's validation cases, scored like any model.")
    outs, scores = scored(STITCH, slug)
    return Stage(
        parents.name("stitch_reference"), "stitch_ops.stages.stitch_reference",
        parents.args(f"--pair {PAIR} --c {C} --fold {FOLD}"), stitch_axes(parents, "pair", "c", "fold"),
        deps=[*parent_models(parents), RAW], params=[DEVICE], outs=outs, metrics=scores,
        comment=comment if parents is BASIS else "")


def stitch_strategies(parents: StitchParents) -> Stage:
    slug = stitch_slug(parents)
    chosen = [f"{slug}_{strategy}" for strategy in approaches.SELECTION_STRATEGIES[1:]]
    comment = ("Selection strategies 1-3 (issue 7): after every position of every stitch network is scored\n"
               "(the whole scores/ tree: strategy 3 pools over pairs, parties, methods and folds), write\n"
               "metrics/{pair}/stitch/{slug}/fold_k/{positions.csv,no_stitch.json,selection.json} and predict\n"
               "the stitch-ensembles of strategies 2 and 3 (slugs {slug}_all_folds, {slug}_rule_of_thumb).")
    return Stage(
        parents.name("stitch_strategies"), "stitch_ops.stages.stitch_strategies", parents.args(STITCH_NETWORK_ARGS),
        stitch_axes(parents, "pair", "c", "method", "fold"),
        deps=[Item(SCORES), Item(metrics(STITCH, reference_slug(parents), "summary.json")),
              Item(f"{model(STITCH, slug)}/network"), *parent_models(parents), Item(predictions(STITCH, slug)), RAW],
        params=[DEVICE],
        outs=[*(Item(predictions(STITCH, s)) for s in chosen), *(Item(metrics(STITCH, s, "cases.csv")) for s in chosen)],
        plots=[Item(metrics(STITCH, slug, "positions.csv"), {"x": "k", "y": "dice",
                                                             "title": "stitch-ensemble validation Dice per position k"},
                    above="the position trend: validation Dice of the stitch-ensemble at every scored k")],
        metrics=[uncached(metrics(STITCH, slug, "no_stitch.json")), uncached(metrics(STITCH, slug, "selection.json")),
                 *(uncached(metrics(STITCH, s, "summary.json")) for s in chosen)],
        comment=comment if parents is BASIS else "")


def stitch_ablation() -> Stage:
    slug = f"via_{C}_${{stitching.ablation.method}}"
    ablation = "ablation"
    comment = ("Ablation (issue 22; ours, not the paper's): the stitch-ensemble a←[c]→b of stitching.ablation.method\n"
               "(the default variant, read from stitch_train/stitch_select) against its stitches trained again as the\n"
               "variants of stitching.ablation.variants (least-squares start; 2x / 4x the epochs), each scored at every\n"
               "position the pipeline scored, at the selected and the best position on both test sets, with the distance\n"
               "of the stitches from their least-squares optimum. The report gathers the tables (section \"Ablation\").")
    return Stage(
        "stitch_ablation", "stitch_ops.stitching.ablation", f"--pair {PAIR} --c {C} --fold {FOLD}",
        {"pair": Item("${stitching.ablation.pairs}"), "c": Item("${stitching.ablation.c_parties}"), "fold": FOLDS},
        deps=[Item(f"{model(STITCH, slug)}/network"),
              Item((PATHS.scores(STITCH, slug, FOLD_NUMBER) / "positions.csv").as_posix()),
              Item(metrics(STITCH, slug, "summary.json")),
              Item(metrics(Approach.ENSEMBLE, approaches.ensemble().trained_on, "summary.json")),
              Item(metrics(Approach.LOCAL, C, "summary.json")), *BASIS_MODELS, Item(preprocessed(C)), RAW],
        params=[Item("seed"), Item("stitching.training"), Item("stitching.ablation"), DEVICE],
        outs=[persisted(model(ablation, slug), above="persisted: a killed run resumes the variant it was training; "
                                                     "finished variants are reused"),
              Item(metrics(ablation, slug, "ablation.csv")), Item(metrics(ablation, slug, "positions.csv"))],
        metrics=[uncached(metrics(ablation, slug, "ablation.json"))], comment=comment)


def rq1() -> Stage:
    fold = 0
    comment = ("RQ1 (issue 7): fold 0, networks with 0..all stitches active (rq1.counts of them, evenly\n"
               "spread; null: every count), rq1.samples per count, both methods, on c's validation cases.")
    networks = [Item(f"{model(STITCH, f'via_{C}_{method}', fold)}/network") for method in sorted(StitchMethod)]
    return Stage(
        "rq1", "stitch_ops.stages.rq1", f"--pair {PAIR} --c {C}", {"pair": PAIRS, "c": Item(BASIS.c_parties)},
        deps=[*networks, *(Item(model(Approach.LOCAL, party, fold)) for party in config.PARTIES), RAW],
        params=[Item("seed"), Item("rq1"), DEVICE], outs=[Item(metrics("rq1", C, "rq1.csv", fold))],
        plots=[uncached(metrics("rq1", C, "rq1.png", fold))], comment=comment)


def stitching_stages() -> list[Stage]:
    twins = [declare(parents) for declare in (stitch_train, stitch_select, bundle_stitch, stitch_reference,
                                              stitch_strategies) for parents in (BASIS, FINETUNED)]
    return [*twins, stitch_ablation(), rq1()]


# ---------------------------------------------------------------- baselines

BASELINES_COMMENT = (
    "---- baselines (issue 4) ----\n"
    "Fine-tuning a→b / b→a, ensembles a&b and a&b→a, federated a‖b, merged a+b, and the\n"
    "Ray Tune + Optuna sweep of the fine-tuning learning rate. Each stage that makes a model\n"
    "also predicts both test sets and scores them like the basis models, in one process.\n"
    "Declared by the approach plug-ins (stitch_ops/stages/<approach>.py, PLUGIN).")


def baseline_stages() -> list[Stage]:
    """Every approach plug-in's stages, in the order of the approach table."""
    declared = [stage for plugin in plugins() for stage in plugin.stages()]
    first = declared[0]
    return [replace(first, comment="\n".join(filter(None, [BASELINES_COMMENT, first.comment]))), *declared[1:]]


# ---------------------------------------------------------------- the report

def report_stages() -> list[Stage]:
    pair_report = REPORTS / PAIR
    return [
        Stage("report", "stitch_ops.evaluation.report", f"--pair {PAIR}", {"pair": PAIRS},
              deps=[Item(PATHS.metrics_root.as_posix()), RAW], params=[Item("profile")],
              outs=[Item(f"{pair_report}.html"), Item(f"{pair_report}.md"), Item((pair_report / "tables").as_posix())],
              plots=[uncached((pair_report / "figures").as_posix())],
              metrics=[uncached((REPORTS / "metrics" / f"{PAIR}.json").as_posix())],
              comment="---- the report (issue 7) ----\n"
                      "One self-contained HTML (+ Markdown) report per pair from everything under metrics/<pair>/\n"
                      "(per-case tables, budgets, positions, selections, RQ1), then an index across pairs."),
        Stage("report_index", "stitch_ops.evaluation.report", "--index", deps=[Item((REPORTS / "metrics").as_posix())],
              params=[Item("pairs")], outs=[Item((REPORTS / "index.html").as_posix())]),
    ]


def stages() -> list[Stage]:
    """Every stage, in the order ``dvc.yaml`` lists them (the data's journey)."""
    return [code_stage(), *data_stages(), *basis_stages(), *stitching_stages(), *baseline_stages(), *report_stages()]
