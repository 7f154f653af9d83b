"""The MLflow pyfunc of a stitch_ops model, logged *from code* (no pickle).

MLflow runs this file when the model is loaded; the exported model folder is the
artifact ``model`` (see :mod:`stitch_ops.tracking.models`, which logs this file by its path: no
import, so the logging stages stay below the model opener).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model


class NnUNetPyfunc(mlflow.pyfunc.PythonModel):
    """Segments images ``N C H W`` (or ``N C X Y Z``) with nnU-Net's predictor."""

    def load_context(self, context: Any) -> None:
        from stitch_ops.tracking.models import MODEL_ARTIFACT
        from stitch_ops.bundle.segmenter import Segmenter

        self.segmenter = Segmenter(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        spacing = tuple(float(s) for s in (params or {}).get("spacing", (1.0, 1.0, 1.0)))
        return self.segmenter.segment(model_input, spacing)


set_model(NnUNetPyfunc())
