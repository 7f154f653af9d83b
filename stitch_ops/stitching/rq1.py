"""RQ1: how a combined network holds up as more stitches are active, per training method.

For fold 0 of a pair and a stitching party c, the combined networks of both training methods
(direct matching, double-batched; stitches trained on c's unlabeled images) are sampled at
stitch counts from 0 to the number of switches: for each count, ``samples`` networks whose
active switches are drawn uniformly *without replacement* among all switches except those of
the output match (switching there would just swap one network's logits for the other's), the
output taken from a random parent, duplicates removed; both methods get the same draws (one
seed each), so they are compared on the same configurations. Each network segments c's validation
cases of the fold; Dice and HD95 means go to ``metrics/{pair}/rq1/{c}/fold_0/rq1.csv``
(columns ``method, n_stitches, sample, dice, hd95``) with a simple plot ``rq1.png`` beside it.

A sampled network computes only what its output needs (:meth:`StitchedNetwork.forward
<stitch_ops.stitching.network.StitchedNetwork.forward>`): a switch on original is a wire, so the
parent that is not the output runs only as far as the last active stitch into the output
parent's side reads it, and not at all with no stitch active. The same for every sampled network
and both methods; the outputs are those of running every switch
(``tests/stitching/test_stitching_network.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from stitch_ops import tracking
from stitch_ops.approaches import StitchMethod
from stitch_ops.config import ConfigError, Params, load_section
from stitch_ops.data.splits import read_fold
from stitch_ops.evaluation import figures
from stitch_ops.nnunet.model import NnUNetModel, load_model
from stitch_ops.nnunet.predict import preprocess_cases
from stitch_ops.outputs import output_file, scratch_dir, write_table
from stitch_ops.paths import VALIDATION_SET, PairPaths
from stitch_ops.stitching.artifacts import basis_export, load_trained_network
from stitch_ops.stitching.network import Parent, SwitchConfiguration
from stitch_ops.stitching.scoring import score_on_validation
from stitch_ops.stitching.switch import SwitchMode

logger = logging.getLogger(__name__)

FOLD = 0
COLUMNS = ("method", "n_stitches", "sample", "dice", "hd95")


@dataclass(frozen=True)
class Rq1Params:
    """``params.yaml`` section ``rq1``.

    Attributes:
        samples: networks sampled per stitch count (duplicates removed afterwards).
        counts: how many stitch counts, evenly spread from 0 to the number of switches
            (a stride); ``null``: every count.
    """

    samples: int = 3
    counts: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or isinstance(self.samples, bool) or self.samples < 1:
            raise ConfigError(f"'rq1.samples' must be a positive integer, got {self.samples!r}")
        if self.counts is not None and (not isinstance(self.counts, int) or self.counts < 2):
            raise ConfigError(f"'rq1.counts' must be null (every count) or an integer >= 2, got {self.counts!r}")


def eligible_switches(num_matches: int, output_matches: Sequence[int]) -> list[int]:
    """Switch indices (``0..n-1``: at ``a_k``; ``n..2n-1``: at ``b_k``) that RQ1 may activate."""
    excluded = set(output_matches)
    return [i for i in range(2 * num_matches) if i % num_matches not in excluded]


def stitch_counts(num_switches: int, counts: int | None) -> list[int]:
    """The stitch counts to sample: every count 0..``num_switches``, or ``counts`` of them evenly
    spread (always including 0 and ``num_switches``)."""
    if counts is None or counts > num_switches:
        return list(range(num_switches + 1))
    return sorted({int(round(c)) for c in np.linspace(0, num_switches, counts)})


def sample_networks(num_matches: int, output_matches: Sequence[int], n_stitches: int, samples: int,
                    generator: torch.Generator) -> list[SwitchConfiguration]:
    """Up to ``samples`` distinct configurations with exactly ``n_stitches`` switches on ``stitched``.

    The active switches are drawn uniformly without replacement among the eligible ones
    (:func:`eligible_switches`), the output parent uniformly among A and B; a configuration
    drawn twice is kept once, so fewer than ``samples`` may come back (e.g. with 0 stitches
    at most two: one per output parent).

    Raises:
        ValueError: if ``n_stitches`` exceeds the number of eligible switches.
    """
    eligible = eligible_switches(num_matches, output_matches)
    if not 0 <= n_stitches <= len(eligible):
        raise ValueError(f"n_stitches should be in [0, {len(eligible)}] (switches outside the output match), "
                         f"got {n_stitches}")
    found: list[SwitchConfiguration] = []
    for _ in range(samples):
        chosen = {eligible[i] for i in torch.randperm(len(eligible), generator=generator)[:n_stitches].tolist()}
        modes = [SwitchMode.STITCHED if i in chosen else SwitchMode.ORIGINAL for i in range(2 * num_matches)]
        output = Parent.A if torch.randint(2, (1,), generator=generator).item() == 0 else Parent.B
        configuration = SwitchConfiguration(tuple(modes[:num_matches]), tuple(modes[num_matches:]), output)
        if configuration not in found:
            found.append(configuration)
    return found


def output_matches(network: Any) -> list[int]:
    """Indices of the matches whose nodes are a parent's output (the logits)."""
    outputs = [_output_node(network.graph_a.module), _output_node(network.graph_b.module)]
    return [k for k, m in enumerate(network.matches) if m.node_a == outputs[0] or m.node_b == outputs[1]]


def _output_node(module: torch.fx.GraphModule) -> str:
    output = next(node for node in module.graph.nodes if node.op == "output")
    return output.args[0].name


def run(params: Params, pair: str, c: str, progress: bool = True, root: Path = Path(".")) -> pd.DataFrame:
    """Sample and score the RQ1 networks of ``pair`` for stitching party c; write the CSV and plot."""
    section = load_section(params, "rq1", Rq1Params)
    paths = PairPaths(pair, root)
    own = load_model(basis_export(paths, c, FOLD))
    raw = paths.raw_dataset(c)
    val_cases = list(read_fold(raw, FOLD).val)
    preprocessed = preprocess_cases(own, raw / "imagesTr", val_cases, progress)
    out = paths.metrics_root / "rq1" / c / f"fold_{FOLD}"
    rows = []
    for method in sorted(StitchMethod, key=lambda m: m.value):
        # the same seed for each method: both score the same sampled networks (a paired comparison)
        generator = torch.Generator().manual_seed(params.seed)
        network = load_trained_network(paths, c, method.value, FOLD)
        network.set_training(None)
        network.eval()
        excluded = output_matches(network)
        num_switches = len(eligible_switches(len(network.matches), excluded))
        counts = stitch_counts(num_switches, section.counts)
        logger.info("%s c=%s %s: %d switches (output match %s excluded), counts %s", pair, c, method.value,
                    num_switches, excluded, counts)
        for n_stitches in counts:
            configurations = sample_networks(len(network.matches), excluded, n_stitches, section.samples, generator)
            for sample, configuration in enumerate(configurations):
                network.configure(configuration)
                model = NnUNetModel(network, own.plans, own.dataset_json, own.configuration, None,
                                    f"RQ1 {method.value} {n_stitches} stitches #{sample}")
                with scratch_dir(out.with_name(f"{out.name}.predictions")) as folder:
                    scores = score_on_validation(model, preprocessed, raw / "labelsTr", folder / "cases",
                                                 params.nnunet.device, pair=pair, test_party=f"{VALIDATION_SET}_{c}",
                                                 approach="rq1", trained_on=c, fold=FOLD, cases=val_cases)
                rows.append({"method": method.value, "n_stitches": n_stitches, "sample": sample,
                             "dice": float(scores["dice"].mean()), "hd95": float(scores["hd95"].mean())})
                logger.info("%s %d stitches #%d (output %s): Dice %.4f, HD95 %.2f", method.value, n_stitches,
                            sample, configuration.output.value, rows[-1]["dice"], rows[-1]["hd95"])
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_table(out / "rq1.csv", table)
    with output_file(out / "rq1.png") as picture:
        figures.rq1(table, picture, figures.hd95_unit(own.dataset_json["file_ending"]),
                    f"{pair}: stitches trained on {c}'s data, validation cases of {c}")
    _log(pair, c, table, out, section)
    return table


def _log(pair: str, c: str, table: pd.DataFrame, out: Path, section: Rq1Params) -> None:
    """One MLflow run per (pair, c) with the table and the plot; metrics: each method's mean
    validation Dice/HD95 with no stitch and with every eligible stitch active."""
    metrics = {}
    for method, group in table.groupby("method"):
        for label, count in (("none", group["n_stitches"].min()), ("all", group["n_stitches"].max())):
            rows = group[group["n_stitches"] == count]
            metrics[f"{method}/dice_{label}_stitches"] = float(rows["dice"].mean())
            metrics[f"{method}/hd95_{label}_stitches"] = float(rows["hd95"].mean())
    tracking.configure(Path("."))
    tracking.log_run(experiment=tracking.experiment_name(pair),
                     tags={"pair": pair, "approach": "rq1", "trained_on": c, "fold": str(FOLD)},
                     params={"samples": section.samples, "counts": section.counts, "networks": len(table)},
                     metrics=metrics, artifacts=[out / "rq1.csv", out / "rq1.png"],
                     run_name=f"rq1:{c}:fold{FOLD}", dvc_stage=f"rq1@{pair}-{c}")
