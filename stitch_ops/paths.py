"""Where every pipeline artifact lives, in one place.

``dvc.yaml`` declares the same paths as outputs; the stages compute them here so a
script never hard-codes a path that could drift from the pipeline. All paths are
relative to the working directory (the repository root when run by DVC).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stitch_ops.approaches import Approach

PARTY_DATASET_IDS = {"a": 1, "b": 2}
MERGED_DATASET_ID = 3
VALIDATION_SET = "val"
JOINT = "joint"
"""``plans_from`` of the joint plans (``{party}_with_plans_joint``): both parties' data under plans
from their combined fingerprint (federated, merged)."""
REPORTS = Path("reports")
"""The reports folder: ``{pair}.html``, ``{pair}.md``, ``{pair}/`` (figures, tables), ``index.html``."""


def dvc_stage(name: str, *axes: object) -> str:
    """The name DVC gives one stage of ``dvc.yaml``'s ``foreach``/``matrix`` family ``name``:
    ``name@`` and the item's values joined by ``-`` (``train@polyp-a-0``), in the order of the
    family's axes. What a stage records as its MLflow tag ``dvc_stage``; written here once."""
    return f"{name}@{'-'.join(str(axis) for axis in axes)}"


def bundle_definition(approach: str, root: Path = Path(".")) -> Path:
    """The MONAI bundle that defines an approach (``bundles/<approach>``: configs, docs, licence)."""
    return root / "bundles" / approach


def test_set(party: str) -> str:
    """Name of the prediction folder of ``party``'s test set (``test_a``): the ``test_party`` scored there."""
    return f"test_{party}"


def dataset_name(pair: str, party: str) -> str:
    """nnU-Net dataset folder name of a party's working dataset, e.g. ``Dataset001_polyp_a``."""
    return f"Dataset{PARTY_DATASET_IDS[party]:03d}_{pair}_{party}"


@dataclass(frozen=True)
class PairPaths:
    """Paths of one dataset pair's artifacts."""

    pair: str
    root: Path = Path(".")

    @property
    def source(self) -> Path:
        """Raw datasets with every case (generated or converted), one folder per party."""
        return self.root / "data" / self.pair / "source"

    @property
    def raw_root(self) -> Path:
        """The pair's ``nnUNet_raw``: both parties' working datasets, test cases in imagesTs."""
        return self.root / "data" / self.pair / "nnUNet_raw"

    def raw_dataset(self, party: str) -> Path:
        return self.raw_root / dataset_name(self.pair, party)

    def preprocessed_root(self, party: str, plans_from: str | None = None) -> Path:
        """The ``nnUNet_preprocessed`` root of a party's data, preprocessed with its own plans
        or (``plans_from``) with the other party's transferred plans."""
        name = party if plans_from in (None, party) else f"{party}_with_plans_{plans_from}"
        return self.root / "data" / self.pair / "nnUNet_preprocessed" / name

    def model_dir(self, approach: str, trained_on: str, fold: int) -> Path:
        """``nnUNet_results`` root of one trained model; ``export/`` inside holds the portable model."""
        return self.root / "models" / self.pair / approach / trained_on / f"fold_{fold}"

    def predictions(self, approach: str, trained_on: str, fold: int) -> Path:
        return self.root / "predictions" / self.pair / approach / trained_on / f"fold_{fold}"

    @property
    def metrics_root(self) -> Path:
        """Every evaluated model's metrics: ``metrics/{pair}/{approach}/{trained_on}/fold_k``."""
        return self.root / "metrics" / self.pair

    def training_curve(self, approach: str, trained_on: str, fold: int) -> Path:
        """The copy of a model's per-epoch training curve that ``dvc plots`` draws: nnU-Net
        trainings (losses, pseudo-Dice, LR) under ``plots/training``, stitch training (loss,
        LR) under ``plots/stitch_training``, as the two have different columns."""
        kind = "stitch_training" if approach == Approach.STITCH else "training"
        return self.root / "plots" / kind / self.pair / approach / trained_on / f"fold_{fold}.csv"

    def metrics(self, approach: str, trained_on: str, fold: int) -> Path:
        return self.metrics_root / approach / trained_on / f"fold_{fold}"

    def sweep(self, approach: str, trained_on: str, fold: int) -> Path:
        """A learning-rate sweep's results (``best.json``) for one model."""
        return self.root / "sweeps" / self.pair / approach / trained_on / f"fold_{fold}"

    def export(self, approach: str, trained_on: str, fold: int) -> Path:
        """The trained MONAI bundle of one model, ready to send to another party."""
        return self.root / "exports" / self.pair / f"{approach}_{trained_on}_fold{fold}"

    def scores(self, approach: str, trained_on: str, fold: int) -> Path:
        """Validation scores that selection reads (e.g. every scored stitch position); kept apart
        from ``metrics/`` so that the selection stage can depend on the whole ``scores/`` tree."""
        return self.root / "scores" / self.pair / approach / trained_on / f"fold_{fold}"
