"""The approaches of the paper other than stitching, built on the basis models:
fine-tuning with warm-up (``a→b``), softmax ensembles (``a&b``, ``a&b→a``), federated
averaging on Ray (``a‖b``), merged data (``a+b``), and the Ray Tune + Optuna sweep of the
fine-tuning learning rate.

Their slugs, shorthands and perspectives are in :mod:`stitch_ops.approaches`. Modules: :mod:`~.config`
(params sections), :mod:`~.plans` (shared plans), :mod:`~.finetune`, :mod:`~.ensemble`,
:mod:`~.federated`, :mod:`~.merged`, :mod:`~.sweep`, :mod:`~.stages` (one function per
DVC stage). Heavy dependencies (nnunetv2, ray) are imported inside functions.
"""

from stitch_ops.baselines.finetune import WarmupSchedule, last_nonzero_lr

__all__ = ["WarmupSchedule", "last_nonzero_lr"]
