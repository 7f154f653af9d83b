"""MLflow helpers: the project's tracking store and idempotent run records.

MLflow itself is imported only when a function here is called.
"""

from stitch_ops.tracking.runs import (
    DVC_STAGE_TAG,
    GIT_COMMIT_TAG,
    PARENT_RUN_TAG,
    RUN_KEY_TAG,
    TrackingStore,
    configure,
    experiment_name,
    git_commit,
    log_metrics,
    log_run,
    run_key,
)

__all__ = [
    "DVC_STAGE_TAG",
    "GIT_COMMIT_TAG",
    "PARENT_RUN_TAG",
    "RUN_KEY_TAG",
    "TrackingStore",
    "configure",
    "experiment_name",
    "git_commit",
    "log_metrics",
    "log_run",
    "run_key",
]
