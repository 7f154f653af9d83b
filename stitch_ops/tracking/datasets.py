"""What a run saw: its input datasets, named ``<pair>/<party>/<subset>`` with DVC's hash.

Each input is logged with ``MlflowClient.log_inputs`` (the runs table's *Dataset* column):
name ``polyp/a/train``, digest = the data's DVC hash (the ``md5`` that ``dvc.lock``
records for a stage output, without DVC's ``.dir`` suffix; for a folder that is not an
output of its own, the same hash computed the way DVC computes it), source = the path.
Two runs that show the same digest saw the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

CONTEXT_TAG = "mlflow.data.context"
DVC_LOCK = Path("dvc.lock")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataInput:
    """One dataset a run used.

    Attributes:
        name: ``<pair>/<party>/<subset>``, e.g. ``polyp/a/train`` or ``polyp/b/test``.
        path: the file or folder (relative to the repository root, as in ``dvc.yaml``).
        context: ``training`` or ``evaluation`` (tag ``mlflow.data.context``).
    """

    name: str
    path: Path
    context: str


def file_md5(path: Path) -> str:
    """MD5 of a file's bytes (DVC 3's hash of a file)."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_md5(folder: Path) -> str:
    """DVC's hash of a folder (without the ``.dir`` suffix): MD5 of the JSON list of
    ``{"md5", "relpath"}`` of every file below it, sorted by path."""
    entries = [{"md5": file_md5(f), "relpath": f.relative_to(folder).as_posix()}
               for f in folder.rglob("*") if f.is_file()]
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


def _locked_md5(path: Path, lock: Path) -> str | None:
    if not lock.is_file():
        return None
    wanted = path.as_posix().rstrip("/")
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out.get("path", "").rstrip("/") == wanted and out.get("md5"):
                return str(out["md5"]).removesuffix(".dir")
    return None


def dvc_digest(path: Path, lock: Path = DVC_LOCK) -> str:
    """DVC's hash of ``path``: from ``dvc.lock`` when it is a stage output recorded there,
    else computed like DVC (:func:`tree_md5` for a folder, :func:`file_md5` for a file).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist; run the stage that produces it first")
    locked = _locked_md5(path, lock)
    if locked is not None:
        return locked
    return tree_md5(path) if path.is_dir() else file_md5(path)


def log_inputs(run_id: str, inputs: Sequence[DataInput], lock: Path = DVC_LOCK) -> None:
    """Record ``inputs`` as the run's datasets (name, DVC digest, local source)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from stitch_ops.tracking import runs

    client, _ = runs.open_client()
    entries = [DatasetInput(Dataset(name=item.name, digest=dvc_digest(item.path, lock), source_type="local",
                                    source=json.dumps({"uri": item.path.as_posix()})),
                            tags=[InputTag(CONTEXT_TAG, item.context)]) for item in inputs]
    client.log_inputs(run_id, datasets=entries)
    logger.info("MLflow run %s inputs: %s", run_id, [item.name for item in inputs])
