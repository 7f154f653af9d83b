"""nnU-Net's predictor on in-memory images, around an exported model folder: what the
registered pyfunc (:mod:`stitch_ops.tracking.pyfunc_model`) runs.

Imported only when a logged model is loaded, so the stages that log models do not depend
on the stitching code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NATURAL_IMAGE_SPACING = (999.0, 1.0, 1.0)  # nnU-Net's NaturalImage2DIO: a 2-D image as 1 x H x W


def load_exported(folder: Path) -> Any:
    """An exported model folder (nnU-Net export or stitch-ensemble) as an ``NnUNetModel``."""
    from stitch_ops.stitching.pipeline import ENSEMBLE_FILE, load_exported_ensemble

    if (Path(folder) / ENSEMBLE_FILE).is_file():
        return load_exported_ensemble(Path(folder))
    from stitch_ops.nnunet.model import load_model

    return load_model(Path(folder))


class Segmenter:
    """nnU-Net's predictor around an exported model, on in-memory images."""

    def __init__(self, folder: Path, device: str = "cpu"):
        from stitch_ops.nnunet.env import resolve_device
        from stitch_ops.nnunet.predict import predictor_for

        model = load_exported(folder)
        self.predictor = predictor_for(model, resolve_device(device), mirroring=False)
        self.channels = model.num_input_channels

    def segment(self, images: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """Label maps of images ``N C H W`` or ``N C X Y Z`` (see the module docstring)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim not in (4, 5) or images.shape[1] != self.channels:
            raise ValueError(f"images should be N C H W or N C X Y Z with C = {self.channels}, "
                             f"got shape {images.shape}")
        two_d = images.ndim == 4
        out = []
        for image in images:
            data = image[:, None] if two_d else image
            properties = {"spacing": list(NATURAL_IMAGE_SPACING if two_d else spacing)}
            segmentation = self.predictor.predict_single_npy_array(data, properties, None, None, False)
            out.append(segmentation[0] if two_d else segmentation)
        return np.stack(out).astype(np.int64)
