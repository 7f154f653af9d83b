"""Ensembles ``a&b`` and ``a&b→a``: the softmax probabilities of two models averaged,
as nnU-Net ensembles do (``nnunetv2.ensembling``), fold ``k`` with fold ``k``.

The inputs are prediction folders (``{case}.npz`` probabilities in the original image
geometry + ``{case}.pkl`` properties, as :func:`stitch_ops.nnunet.predict.predict_folder`
writes them); the output is a prediction folder of the same shape, so the evaluation
stage scores an ensemble exactly like a single model. The two models may have different
plans (a's and b's): their probabilities are compared in the raw image geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stitch_ops.errors import UserError
from stitch_ops.outputs import output_dir

logger = logging.getLogger(__name__)


def _cases(folder: Path) -> set[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"no prediction folder at {folder}: run the predict stage of that model first")
    cases = {p.stem for p in folder.glob("*.npz")}
    if not cases:
        raise FileNotFoundError(f"{folder} has no softmax probabilities (*.npz): predict with "
                                f"save_probabilities=True to ensemble it")
    return cases


def ensemble_folders(inputs: Sequence[Path], output: Path, dataset_json: Mapping[str, Any], *,
                     save_probabilities: bool = True, progress: bool = True) -> Path:
    """Average the probabilities of the prediction folders ``inputs`` case by case into
    ``output`` (segmentations ``{case}{file_ending}``, and ``.npz``/``.pkl`` with
    ``save_probabilities``), written atomically.

    Raises:
        ValueError: the folders do not hold the same cases.
    """
    from nnunetv2.ensembling.ensemble import merge_files
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    if len(inputs) < 2:
        raise ValueError(f"an ensemble needs at least two prediction folders, got {len(inputs)}")
    case_sets = [_cases(Path(f)) for f in inputs]
    if any(s != case_sets[0] for s in case_sets):
        raise UserError(f"prediction folders {[str(f) for f in inputs]} hold different cases "
                         f"(e.g. {sorted(case_sets[0].symmetric_difference(*case_sets[1:]))[:5]}); "
                         f"ensemble the same test set with the same fold")
    file_ending = dataset_json["file_ending"]
    cases = sorted(case_sets[0])
    example = Path(inputs[0]) / f"{cases[0]}{file_ending}"
    writer = determine_reader_writer_from_file_ending(file_ending, str(example) if example.is_file() else None,
                                                      allow_nonmatching_filename=True, verbose=False)()
    labels = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
    with output_dir(output) as staging:
        for case in tqdm(cases, desc=f"ensemble {output.name}", unit="case", disable=not progress):
            merge_files([str(Path(f) / f"{case}.npz") for f in inputs], str(staging / case), file_ending,
                        writer, labels, save_probabilities)
    logger.info("ensembled %d cases of %s into %s", len(cases), [str(f) for f in inputs], output)
    return output
