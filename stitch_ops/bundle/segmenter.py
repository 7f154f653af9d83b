"""nnU-Net's predictor on in-memory images, around an exported model folder: what the
registered pyfunc (:mod:`stitch_ops.bundle.pyfunc_model`) runs.

The folder is opened by :func:`~stitch_ops.bundle.sources.open_model`, the one opener of every
model kind (an nnU-Net export, a stitch-ensemble, a bundle), with its checks. Imported only
when a logged model is loaded, so the stages that log models do not depend on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NATURAL_IMAGE_SPACING = (999.0, 1.0, 1.0)  # nnU-Net's NaturalImage2DIO: a 2-D image as 1 x H x W


class Segmenter:
    """nnU-Net's predictor around an exported model, on in-memory images."""

    def __init__(self, folder: Path, device: str = "cpu"):
        from stitch_ops.bundle.sources import open_model
        from stitch_ops.nnunet.env import resolve_device
        from stitch_ops.nnunet.predict import predictor_for

        model = open_model(folder)
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
