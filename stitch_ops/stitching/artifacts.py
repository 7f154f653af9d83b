"""Where the stitching stages keep what they make, and how it is saved and opened again.

The files of a stitch-ensemble's slug (``models/{pair}/stitch/{slug}/fold_k/``): the trained
stitches (``network/``, :data:`NETWORK_FILE`, with :data:`CHECKPOINT` while training), the
search's record (:data:`SEARCH_FILE`) and the exported stitch-ensemble (``export/``,
:data:`ENSEMBLE_FILE`); the parents each slug is stitched from; c's unlabeled training images.
Every stage and every model opener (:func:`stitch_ops.bundle.sources.open_model`) reads them
through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stitch_ops import approaches
from stitch_ops.approaches import Approach
from stitch_ops.config import PARTIES
from stitch_ops.data.splits import read_fold
from stitch_ops.nnunet.model import ModelError, NnUNetModel, load_model
from stitch_ops.outputs import output_dir, read_json, write_json
from stitch_ops.paths import PairPaths, dataset_name
from stitch_ops.stitching import PreprocessedImages, description_file, load_stitch_ensemble, save_stitch_ensemble
from stitch_ops.stitching.network import load_stitched_network

APPROACH = Approach.STITCH
NETWORK_FILE = "stitched_network.pt"
CHECKPOINT = "checkpoint.pt"
ENSEMBLE_FILE = "stitch_ensemble.pt"
SEARCH_FILE = "search.json"
"""``stitching.search: optuna``: the search's record, in the stitches' ``network`` folder."""


def trained_on(c: str, method: str, finetuned: bool = False) -> str:
    """Slug of a stitch-ensemble: whose data trained the stitches, and how (``via_a_double_batched``;
    ``via_a_double_batched_finetuned`` for ``a←[a]→b→a``)."""
    return approaches.stitch_ensemble(c, method, finetuned).trained_on


def stage_name(name: str, finetuned: bool) -> str:
    """The DVC stage name: ``stitch_train`` or its ``a←[a]→b→a`` twin ``stitch_train_finetuned``."""
    return f"{name}_finetuned" if finetuned else name


def parent_dirs(paths: PairPaths, c: str, fold: int, finetuned: bool = False) -> tuple[Path, Path]:
    """Exported models of parents A and B: the basis models, or (``finetuned``) c's basis model
    and the other party's model fine-tuned on c's data, on the side of its architecture."""
    basis = [basis_export(paths, party, fold) for party in PARTIES]
    if not finetuned:
        return basis[0], basis[1]
    tuned = approaches.finetuned(c)
    tuned_dir = paths.model_dir(tuned.approach, tuned.trained_on, fold) / "export"
    return (basis[0], tuned_dir) if c == PARTIES[0] else (tuned_dir, basis[1])


def load_parents(paths: PairPaths, c: str, fold: int, finetuned: bool = False) -> tuple[Any, Any]:
    """Parents A and B of (c, fold) loaded from their exports (:func:`parent_dirs`)."""
    return tuple(load_model(folder) for folder in parent_dirs(paths, c, fold, finetuned))


def load_trained_network(paths: PairPaths, c: str, method: str, fold: int, finetuned: bool = False) -> Any:
    """The stitched network ``stitch_train`` saved for (c, method, fold), rebuilt on its parents'
    exports (the saved network holds the stitches only)."""
    model_a, model_b = load_parents(paths, c, fold, finetuned)
    network_file = paths.model_dir(APPROACH, trained_on(c, method, finetuned), fold) / "network" / NETWORK_FILE
    return load_stitched_network(network_file, model_a.network, model_b.network)


def basis_export(paths: PairPaths, party: str, fold: int) -> Path:
    """The exported basis model of ``party`` at ``fold``: the parent every stitch-ensemble of c uses."""
    basis = approaches.local(party)
    return paths.model_dir(basis.approach, basis.trained_on, fold) / "export"


def training_images(paths: PairPaths, c: str, fold: int, own: Any) -> Any:
    """c's unlabeled training images of ``fold`` in ``own``'s (c's model's) preprocessing, as
    :class:`~stitch_ops.stitching.PreprocessedImages` (labels never read)."""
    configuration = own.plans["configurations"][own.configuration]
    return PreprocessedImages(paths.preprocessed_root(c) / dataset_name(paths.pair, c)
                              / configuration["data_identifier"], list(read_fold(paths.raw_dataset(c), fold).train))


def export_ensemble(ensemble: Any, own: Any, target: Path, k: int, method: str, c: str, selection: str,
                    finetuned: bool = False) -> None:
    """The selected stitch-ensemble as a portable folder: its weights (a plain ``state_dict``,
    what a bundle's ``model.pt`` holds) and description, and the stitching party's plans that
    say how to feed it."""
    meta = {"configuration": own.configuration, "mirroring_axes": None, "description": f"stitch-ensemble k={k}",
            "k": k, "node_a": ensemble.match.node_a, "node_b": ensemble.match.node_b, "method": method, "c": c,
            "selection": selection, "finetuned": finetuned}
    with output_dir(target) as staging:
        save_stitch_ensemble(ensemble, staging / ENSEMBLE_FILE)
        for name, content in (("plans.json", own.plans), ("dataset.json", own.dataset_json), ("model.json", meta)):
            write_json(staging / name, content)


def load_exported_ensemble(folder: Path) -> Any:
    """An exported stitch-ensemble folder as an ``NnUNetModel`` (weights loaded ``weights_only``)."""
    weights = folder / ENSEMBLE_FILE
    files = [weights, description_file(weights), *(folder / name for name in ("plans.json", "dataset.json", "model.json"))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelError(f"{folder} is not an exported stitch-ensemble: missing {missing}")
    hint = "export the stitch-ensemble again (stitch_select stage)"
    plans, dataset_json, meta = (read_json(f, hint=hint) for f in files[2:])
    try:
        ensemble = load_stitch_ensemble(weights)
    except ValueError as err:
        raise ModelError(f"{err}; {hint}") from None
    return NnUNetModel(ensemble, plans, dataset_json, meta["configuration"], None, meta["description"],
                       {"kind": "stitch_ensemble", "ensemble": ensemble.description.to_dict()}, weights_file=weights)
