"""Federated learning, the learning-rate sweep and the stitch search on a real two-node Ray cluster, started
with the ``ray`` CLI on this machine (a head with ``party_a``, a worker node with
``party_b``) and joined through ``address=``: each party's actor trains on the node holding
its resource, and the cluster outlives the drivers that joined it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest
import yaml
from tests.baselines.tiny_pair import PAIR, TINY, TinyPair

import stitch_ops
from stitch_ops.config import PARTIES
from stitch_ops.paths import dataset_name

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class LocalCluster:
    address: str
    temp_dir: Path
    env: dict[str, str]  # the nodes' environment, for drivers too: Ray's token authentication off on both sides


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (held open together, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((LOCALHOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_ports(ports: Iterator[int]) -> list[str]:
    """Every port a node opens, chosen free: two nodes on one machine (and other Ray users)
    must not meet on Ray's fixed defaults."""
    flags = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [arg for flag in flags for arg in (flag, str(next(ports)))]


def _cluster_pids(temp_dir: Path) -> list[int]:
    """This user's processes of the cluster: every Ray process names its temp dir on its
    command line (``ray stop`` would stop every Ray of this user on the machine)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == os.getuid() \
                    and str(temp_dir).encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def _stop_cluster(temp_dir: Path) -> None:
    pids = _cluster_pids(temp_dir)
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (pids := [p for p in pids if Path(f"/proc/{p}").exists()]):
            time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cluster() -> Iterator[LocalCluster]:
    """A head node (``party_a``) and a worker node (``party_b``), 1 CPU each, with a private
    temp dir; workers import the ``stitch_ops`` under test. Stopped by PID afterwards."""
    ray_cli = Path(sys.executable).with_name("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="stitch_ray_", dir="/tmp"))  # short: Ray's socket paths live below
    ports = iter(_free_ports(16))
    gcs_port = next(ports)
    # workers at the drivers' priority, as the README starts nodes that run other work too
    env = {**os.environ, "PYTHONPATH": str(Path(stitch_ops.__file__).resolve().parents[1]),
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
    common = ["--node-ip-address", LOCALHOST, "--num-cpus", "1", "--temp-dir", str(temp_dir),
              "--object-store-memory", str(100 * 1024 ** 2), "--include-log-monitor", "false",
              "--disable-usage-stats"]
    nodes = [["--head", "--port", str(gcs_port), "--include-dashboard", "false", "--dashboard-port", str(next(ports)),
              "--resources", json.dumps({"party_a": 1})],
             ["--address", f"{LOCALHOST}:{gcs_port}", "--resources", json.dumps({"party_b": 1})]]
    try:
        for node in nodes:
            started = subprocess.run([str(ray_cli), "start", *node, *common, *_node_ports(ports)], env=env,
                                     capture_output=True, text=True, timeout=180)
            assert started.returncode == 0, f"`ray start` failed: {started.stderr[-2000:]}"
        yield LocalCluster(f"{LOCALHOST}:{gcs_port}", temp_dir, env)
    finally:
        _stop_cluster(temp_dir)


def test_an_address_where_no_cluster_answers_fails_at_once_with_one_line():
    import ray

    from stitch_ops.ray_session import RayOptions, init_ray
    from stitch_ops.errors import UserError

    (port,) = _free_ports(1)  # closed again: nothing listens there
    with pytest.raises(UserError, match=rf"cannot reach the Ray cluster at '127.0.0.1:{port}' .*ray start --head"):
        init_ray(RayOptions(f"{LOCALHOST}:{port}"), n_workers=2)
    assert not ray.is_initialized()


def test_address_null_starts_a_ray_of_its_own_whatever_ray_address_names(monkeypatch):
    """``address: null`` means this machine's CPUs, as asked: a bare ``ray.init()`` would instead
    join whatever ``RAY_ADDRESS`` (or the last ``ray start`` here) names, with its resources."""
    import ray

    from stitch_ops.ray_session import RayOptions, init_ray

    (port,) = _free_ports(1)  # nothing listens there: joining it would fail
    monkeypatch.setenv("RAY_ADDRESS", f"{LOCALHOST}:{port}")
    assert init_ray(RayOptions(cpus_per_party=1), n_workers=2)
    try:
        assert ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()


def _drive(root: str, address: str, work: str) -> None:
    """The driver: a pinned federated round, then the fine-tuning sweep and the stitch search,
    each joining the cluster at ``address``; what the test checks goes to ``work/result.json``. It runs in a fresh
    Python with the cluster's environment, as a user's driver does: a local ``ray.init()``
    earlier in the test process switches it to Ray's token authentication for good, and a
    driver in token mode sees the actors of a cluster without it die before they start."""
    import ray

    from stitch_ops.baselines.federated import PartyData, train_federated
    from stitch_ops.baselines.plans import JOINT
    from stitch_ops.baselines.sweep import run_sweep
    from stitch_ops.config import load_params
    from stitch_ops.paths import PairPaths
    from stitch_ops.ray_session import RayOptions
    from stitch_ops.stitching.search import run_search

    paths, out = PairPaths(PAIR, Path(root)), Path(work)
    parties = [PartyData(p, dataset_name(PAIR, p), paths.preprocessed_root(p, plans_from=JOINT).resolve(),
                         out / "parties" / p) for p in PARTIES]
    options = RayOptions(address, cpus_per_party=1, pin_parties=True)
    _, _, history = train_federated(parties, 0, replace(TINY, epochs=1, iterations_per_epoch=2), out / "global",
                                    ray_options=options, progress=False)
    connected_after_federated = ray.is_initialized()
    params = load_params(out / "params.yaml")
    record = run_sweep(PAIR, "b", 0, params, params_file=out / "params.yaml", root=Path(root), progress=False)
    search = run_search(params, PAIR, "a", "direct_matching", 0, progress=False, root=Path(root))
    connected_after_search = ray.is_initialized()
    ray.init(address=address, logging_level="WARNING")
    try:
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
    (out / "result.json").write_text(json.dumps({"history": history, "sweep": record, "search": search,
                                                 "nodes": nodes, "connected_after_federated": connected_after_federated,
                                                 "connected_after_search": connected_after_search}))


@pytest.mark.slow
def test_federated_round_and_both_searches_run_on_a_two_node_cluster(tiny_pair: TinyPair, basis_models, joint, ray_cluster,
                                                             tmp_path):
    from stitch_ops.baselines.plans import prepare_transferred

    prepare_transferred(PAIR, "b", "2d", root=tiny_pair.root, progress=False)
    raw = {"profile": "test", "seed": 0, "pairs": [PAIR], "folds": [0],
           "data": {PAIR: {"source": "synthetic", "cases": {"a": 12, "b": 14}, "image_size": 64}},
           "nnunet": asdict(TINY), "finetune": {"base_lr": 1e-3, "warmup_epochs": 0},
           "federated": {"address": ray_cluster.address, "pin_parties": True},
           "sweep": {"pairs": [PAIR], "routes": ["a_to_b"], "trials": 2, "epochs": 1, "iterations_per_epoch": 2,
                     "max_concurrent": 2, "address": ray_cluster.address},
           "stitching": {"c_parties": ["a"], "methods": ["direct_matching"], "selection": "current_fold",
                         "max_positions": 2, "finetuned_c_parties": [],
                         "training": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 2, "init_batches": 1,
                                      "probe_batches": 1},
                         "search": "optuna", "trials": 2, "search_training": {"iterations_per_epoch": 1},
                         "search_concurrent": 2, "search_address": ray_cluster.address}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    repo = Path(__file__).resolve().parents[2]
    code = f"from tests.baselines.test_ray_cluster import _drive; _drive({str(tiny_pair.root)!r}, " \
           f"{ray_cluster.address!r}, {str(tmp_path)!r})"
    driver = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={**ray_cluster.env, "PYTHONPATH": str(repo)})  # cwd: the sweep's MLflow records
    assert driver.returncode == 0, driver.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())

    assert [r["round"] for r in result["history"]] == [0]
    assert not result["connected_after_federated"]  # the driver disconnected; the cluster ran on for the sweep
    record = result["sweep"]
    assert len(record["trials"]) == 2 and 1e-4 <= record["best_base_lr"] <= 1e-2
    assert record["best_val_dice"] == max(t["val_dice"] for t in record["trials"])
    search = result["search"]  # the stitch search: two trials of (k, lr) on the cluster, then disconnected
    assert len(search["trials"]) == 2 and not result["connected_after_search"]
    assert 0 <= search["best_k"] < search["matches"] and 1e-4 <= search["best_lr"] <= 1e-2
    nodes = result["nodes"]
    assert len(nodes) == 2  # both nodes outlived the drivers that joined them
    placed = {m["party"]: m["node_id"] for m in result["history"][0]["parties"]}
    for party in PARTIES:  # each party trained on the node that holds its resource, and only there
        assert f"party_{party}" in nodes[placed[party]], (party, nodes[placed[party]])
    assert placed["a"] != placed["b"]
    saved = json.loads((tmp_path / "global" / "rounds.json").read_text())
    assert [m["node_id"] for m in saved[0]["parties"]] == [placed[p] for p in PARTIES]  # the user sees it too
