"""Sliding-window prediction of raw images with nnU-Net's predictor, for any network.

Every approach (basis models, fine-tuned, federated, merged, stitch-ensembles) is turned
into an :class:`~stitch_ops.nnunet.model.NnUNetModel` and predicted by this one function,
so all of them are preprocessed, tiled and exported identically.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stitch_ops.nnunet.env import nnunet_threads, resolve_device
from stitch_ops.nnunet.model import NnUNetModel
from stitch_ops.outputs import output_dir

logger = logging.getLogger(__name__)


def list_cases(folder: Path, file_ending: str) -> dict[str, list[str]]:
    """Case id → its channel files (``{case}_{XXXX}{file_ending}``) in an nnU-Net images folder.

    nnU-Net's matching rule (``create_paths_fn``) applied in this process: its
    ``create_lists_from_splitted_dataset_folder`` forks a pool of 12 processes, and a fork
    from a threaded process (a Ray Tune trial, for one) can deadlock in the child; the
    sweep's trials hung there."""
    from batchgenerators.utilities.file_and_folder_operations import subfiles
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    if not folder.is_dir():
        raise FileNotFoundError(f"no images folder at {folder}")
    cases = list(get_identifiers_from_splitted_dataset_folder(str(folder), file_ending))
    if not cases:
        raise FileNotFoundError(f"no '*_0000{file_ending}' images in {folder}")
    files = subfiles(str(folder), suffix=file_ending, join=False, sort=True)
    return {case: create_paths_fn(str(folder), files, file_ending, case) for case in cases}


@dataclass(frozen=True)
class PreprocessedCase:
    """A case preprocessed with a model's plans: ``data`` is ``C X Y Z``, ``properties`` what
    nnU-Net needs to put a prediction back into the original image geometry."""

    case: str
    data: np.ndarray
    properties: dict[str, Any]


def iter_preprocessed(model: NnUNetModel, images: Path, cases: Sequence[str] | None = None,
                      progress: bool = True) -> Iterator[PreprocessedCase]:
    """Read and preprocess ``cases`` of ``images`` (all by default) as ``model``'s plans say,
    one case at a time (the folder is listed once; a caller may save each case as it comes)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(model.plans)
    configuration = plans_manager.get_configuration(model.configuration)
    available = list_cases(images, model.dataset_json["file_ending"])
    missing = sorted(set(cases or ()) - set(available))
    if missing:
        raise FileNotFoundError(f"cases {missing[:5]} have no images in {images}")
    preprocessor = configuration.preprocessor_class(verbose=False)
    selected = list(cases) if cases is not None else list(available)
    for case in tqdm(selected, desc=f"preprocess {images.name}", unit="case", disable=not progress):
        data, _, properties = preprocessor.run_case(available[case], None, plans_manager, configuration,
                                                    model.dataset_json)
        yield PreprocessedCase(case, data, properties)


def preprocess_cases(model: NnUNetModel, images: Path, cases: Sequence[str] | None = None,
                     progress: bool = True) -> list[PreprocessedCase]:
    """Read and preprocess ``cases`` of ``images`` (all by default) as ``model``'s plans say.

    Separate from prediction so that many networks with the same plans (e.g. the
    stitch-ensembles at every position) share one preprocessing of the images.
    """
    return list(iter_preprocessed(model, images, cases, progress))


def sliding_window_logits(predictor: Any, image: torch.Tensor) -> torch.Tensor:
    """nnU-Net's sliding window over ``image`` (``C X Y [Z]``, preprocessed) with the logits
    accumulated in float32; returns them on the predictor's device.

    The tiles (``_internal_get_sliding_window_slicers``), the padding, the Gaussian weights
    and test-time mirroring (``_internal_maybe_mirror_and_predict``) are nnU-Net's own; only
    the accumulator differs. nnU-Net accumulates in half precision (11 significant bits): for
    an ensemble, whose outputs are averaged probabilities, classes within ~5e-4 of each other
    round to a tie, and the tie goes to the first class, background. Those near-tie pixels are
    exactly the ones a stitch moves: in half precision stitch-ensembles lost 0.005-0.021 Dice
    against the same predictions in float32, the plain ensemble (averaged from saved float32
    probabilities) nothing. Every model is predicted this way, so all are tiled alike.
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    patch_size = tuple(predictor.configuration_manager.patch_size)
    device = predictor.device
    autocast = torch.autocast(device.type) if device.type == "cuda" else contextlib.nullcontext()  # as nnU-Net
    with torch.no_grad(), autocast:
        data, revert_padding = pad_nd_image(image, patch_size, "constant", {"value": 0}, True, None)
        data = data.to(device)
        logits = torch.zeros((predictor.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.float32,
                             device=device)
        weights = torch.zeros(data.shape[1:], dtype=torch.float32, device=device)
        gaussian = compute_gaussian(patch_size, sigma_scale=1. / 8, value_scaling_factor=10, device=device,
                                    dtype=torch.float32) if predictor.use_gaussian else 1
        for tile in predictor._internal_get_sliding_window_slicers(data.shape[1:]):
            prediction = predictor._internal_maybe_mirror_and_predict(data[tile][None])[0].float()
            logits[tile] += prediction * gaussian
            weights[tile[1:]] += gaussian
        logits /= weights
    return logits[(slice(None), *revert_padding[1:])]


@functools.cache
def _float32_predictor_class() -> type:
    """:class:`nnUNetPredictor` whose sliding window accumulates in float32
    (:func:`sliding_window_logits`), and which does not reload the weights for every case
    when it holds one parameter set: the network was initialised with exactly those."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class Float32Predictor(nnUNetPredictor):
        def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
            if input_image.ndim != 4:
                raise ValueError(f"input_image must be C X Y Z, got shape {tuple(input_image.shape)}")
            return sliding_window_logits(self, input_image)

        def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
            if len(self.list_of_parameters) != 1:
                return super().predict_logits_from_preprocessed_data(data)
            with nnunet_threads():  # nnU-Net's rule: at most nnUNet_def_n_proc threads
                return self.predict_sliding_window_return_logits(data).to("cpu")

    return Float32Predictor


def predictor_for(model: NnUNetModel, torch_device: torch.device, mirroring: bool, stacked: int = 1) -> Any:
    """nnU-Net's predictor for ``model`` (tiles overlap by half, Gaussian weights, logits
    accumulated in float32: :func:`sliding_window_logits`), initialised in memory.
    ``stacked``: the network returns that many predictions stacked along channels."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(model.plans)
    predictor = _float32_predictor_class()(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                           perform_everything_on_device=torch_device.type == "cuda",
                                           device=torch_device, verbose=False, allow_tqdm=False)
    network = model.network.to(torch_device).eval()
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration(model.configuration),
                                    [network.state_dict()], model.dataset_json, model.description,
                                    model.mirroring_axes)
    if stacked > 1:
        predictor.label_manager = _StackedHeads(predictor.label_manager, stacked)
    return predictor


class _StackedHeads:
    """The predictor's label manager, for a network that stacks ``copies`` predictions along
    the channel axis. The sliding window reads only ``num_segmentation_heads`` (to size its
    logits accumulator) and treats every channel on its own, so each copy's channels
    accumulate exactly as a separate prediction's would; the rest is the real label manager."""

    def __init__(self, label_manager: Any, copies: int):
        self._label_manager = label_manager
        self.num_segmentation_heads = label_manager.num_segmentation_heads * copies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._label_manager, name)


def predict_preprocessed(model: NnUNetModel, cases: Sequence[PreprocessedCase], output: Path, *,
                         save_probabilities: bool = True, device: str = "auto", mirroring: bool = False,
                         progress: bool = True, logits: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Sliding-window prediction of preprocessed ``cases``, exported into ``output`` atomically.
    ``logits``: see :func:`predict_preprocessed_stacked`."""
    return predict_preprocessed_stacked(model, cases, [output], save_probabilities=save_probabilities,
                                        device=device, mirroring=mirroring, progress=progress, logits=logits)[0]


def predict_preprocessed_stacked(model: NnUNetModel, cases: Sequence[PreprocessedCase], outputs: Sequence[Path], *,
                                 save_probabilities: bool = True, device: str = "auto", mirroring: bool = False,
                                 progress: bool = True, logits: Mapping[str, torch.Tensor] | None = None,
                                 keep: Callable[[PreprocessedCase, torch.Tensor], None] | None = None) -> list[Path]:
    """Predict ``cases`` with a network that stacks ``len(outputs)`` models' predictions along
    the channel axis (each with the plans' classes, e.g.
    :class:`~stitch_ops.stitching.positions.PositionEnsembles`): one sliding window per case,
    one logits accumulator per model, each model's segmentations exported into its own output
    folder (atomically) as :func:`predict_preprocessed` would export them.

    Args:
        logits: case id -> the logits (``(N K) X Y Z``, on the CPU) this sliding window gives
            for that case with these settings, already computed (e.g. the case's slice of a
            stacked prediction); they are exported as they are, without predicting the case again.
        keep: called with every case and its logits (on the CPU) before they are exported.

    Raises:
        ValueError: if no output is given or two outputs are the same folder.
    """
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    if not outputs or len(set(outputs)) != len(outputs):
        raise ValueError(f"expected distinct output folders, one per stacked model, got {list(outputs)}")
    known = logits or {}
    predictor = predictor_for(model, resolve_device(device), mirroring, len(outputs))
    with ExitStack() as stack:
        stagings = [stack.enter_context(output_dir(output)) for output in outputs]
        for item in tqdm(cases, desc=f"predict {outputs[0].name}", unit="case", disable=not progress):
            if item.case in known:
                logits = known[item.case]
            else:
                with torch.no_grad():
                    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(item.data)).cpu()
            if keep is not None:
                keep(item, logits)
            for part, staging in zip(logits.chunk(len(outputs)), stagings):
                export_prediction_from_logits(part, copy.deepcopy(item.properties), predictor.configuration_manager,
                                              predictor.plans_manager, model.dataset_json, str(staging / item.case),
                                              save_probabilities)
    logger.info("predicted %d cases into %s", len(cases), ", ".join(str(o) for o in outputs))
    return list(outputs)


def predict_folder(model: NnUNetModel, images: Path, output: Path, *, cases: Sequence[str] | None = None,
                   save_probabilities: bool = True, device: str = "auto", mirroring: bool = False,
                   progress: bool = True) -> Path:
    """Segment every case in ``images`` into ``output`` (written atomically).

    Args:
        model: network and plans; its plans decide the preprocessing.
        images: nnU-Net images folder (``{case}_0000.png`` or ``.nii.gz``).
        output: receives ``{case}{file_ending}`` segmentations and, with
            ``save_probabilities``, ``{case}.npz`` softmax probabilities for ensembling.
        cases: only these case ids (e.g. a fold's validation cases); default all.
        mirroring: test-time mirroring (off by default on CPU: 4–8× slower).

    Returns:
        ``output``.
    """
    return predict_preprocessed(model, preprocess_cases(model, images, cases, progress), output,
                                save_probabilities=save_probabilities, device=device,
                                mirroring=mirroring, progress=progress)
