"""Trained models in the MLflow registry: logged as pyfunc, loaded back by alias, and
segmenting exactly like the pipeline's prediction (tiny real nnU-Nets, real MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stitch_ops import tracking
from stitch_ops.config import PARTIES
from tests.baselines.tiny_pair import PAIR, TinyPair

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")


def _stitch_ensemble_export(basis_models: dict[str, Path], target: Path, selection: str) -> Path:
    """The stitch-ensemble of the two basis models at their middle match, exported like
    ``stitch_select`` does (untrained stitches: the test is about the plumbing)."""
    from stitch_ops.nnunet.model import load_model
    from stitch_ops.stitching import StitchedNetwork, extract_stitch_ensemble
    from stitch_ops.stitching.artifacts import export_ensemble

    model_a, model_b = (load_model(basis_models[p]) for p in PARTIES)
    network = StitchedNetwork.from_models(model_a, model_b)
    k = len(network.matches) // 2
    export_ensemble(extract_stitch_ensemble(network, k), model_a, target, k, "direct_matching", "a", selection)
    return target


def _read_images(folder: Path) -> tuple[list[str], np.ndarray]:
    """Test images as nnU-Net reads them (``C 1 H W`` per PNG), stacked ``N C H W``."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    files = sorted(folder.glob("*_0000.png"))
    images = [NaturalImage2DIO().read_images([str(f)])[0][:, 0] for f in files]
    return [f.name.removesuffix("_0000.png") for f in files], np.stack(images).astype(np.float32)


def test_champion_stitch_ensemble_loads_from_the_registry_and_segments_like_the_pipeline(
        tiny_pair: TinyPair, basis_models, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient
    from PIL import Image

    from stitch_ops.nnunet.predict import predict_folder
    from stitch_ops.stitching.artifacts import load_exported_ensemble
    from stitch_ops.tracking.live import model_identity, start_model_run
    from stitch_ops.tracking.models import CHAMPION, log_model, registered_name

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.configure(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    images = tiny_pair.paths.raw_dataset("b") / "imagesTs"
    name = registered_name(PAIR, "stitch", "via_a_direct_matching")

    chosen = _stitch_ensemble_export(basis_models, tmp_path / "strategy1" / "export", "current_fold")
    other = _stitch_ensemble_export(basis_models, tmp_path / "strategy2" / "export", "all_folds")
    versions = {}
    for label, export in (("strategy1", chosen), ("strategy2", other)):
        run = start_model_run(experiment=tracking.experiment_name(PAIR),
                              identity=model_identity(PAIR, "stitch", label, 0))
        versions[label] = log_model(run.run_id, export, pair=PAIR, approach="stitch",
                                    trained_on="via_a_direct_matching")
        assert client.get_run(run.run_id).info.status == "FINISHED"  # the evaluation ends the run
    assert client.get_model_version_by_alias(name, CHAMPION).version == versions["strategy1"].version

    logged = mlflow.models.get_model_info(f"models:/{name}@{CHAMPION}")
    assert tuple(logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, -1, -1)
    assert logged.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # from code
    files = {p.name for p in Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{CHAMPION}")).rglob("*")}
    assert "python_model.pkl" not in files and "stitch_ensemble.pt" in files  # no pickle; weights as data
    # the store holds the weights once: the logged model's file is the export's, hard-linked
    location = client.get_logged_model(logged.model_id).artifact_location.removeprefix("file://")
    (stored,) = Path(location).rglob("stitch_ensemble.pt")
    assert stored.samefile(chosen / "stitch_ensemble.pt")

    pipeline = predict_folder(load_exported_ensemble(chosen), images, tmp_path / "pipeline",
                              save_probabilities=False, device="cpu", progress=False)
    cases, batch = _read_images(images)
    segmented = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").predict(batch)
    assert segmented.shape == (len(cases), *batch.shape[2:])
    for case, labels in zip(cases, segmented):
        assert np.array_equal(labels, np.asarray(Image.open(pipeline / f"{case}.png"))), case


def test_every_trained_model_is_registered_with_its_name(tiny_pair: TinyPair, basis_models, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from stitch_ops.tracking.live import model_identity, start_model_run
    from stitch_ops.tracking.models import CHAMPION, log_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(tracking_uri=tracking.configure(tmp_path))
    run = start_model_run(experiment=tracking.experiment_name(PAIR), identity=model_identity(PAIR, "local", "a", 0))
    version = log_model(run.run_id, basis_models["a"], pair=PAIR, approach="local", trained_on="a")
    assert version.name == f"stitch_ops-{PAIR}-local-a" and version.run_id == run.run_id
    assert client.get_registered_model(version.name).aliases == {}  # only stitch-ensembles are champions
    assert json.loads((basis_models["a"] / "model.json").read_text())["configuration"] == "2d"
    assert CHAMPION == "champion"
