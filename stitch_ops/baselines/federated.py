"""Federated learning ``a‖b``: FedAvg with one Ray actor per party.

Each party actor runs real nnU-Net training (:class:`~stitch_ops.nnunet.trainer.ScheduledTrainer`)
on its own preprocessed data only. A *round* is one nnU-Net epoch on every party; the
parties' weights then go (through Ray's object store, not through the driver) to the
central :class:`FedAvgServer` actor, which averages them weighted by the parties'
training-set sizes; every party starts the next round from the average (its optimiser
state, e.g. SGD momentum, stays local, as in FedAvg).

**Parameters shared under several names.** nnU-Net's ``PlainConvUNet`` keeps a reference to
its encoder inside the decoder, so ``state_dict()`` lists every encoder tensor twice
(``encoder.…`` and ``decoder.encoder.…``). Weights are exchanged as a *canonical state*:
one entry per distinct tensor (:func:`canonical_state`), so each parameter is averaged
exactly once, and written back under all its names (:func:`load_canonical_state`).

**Failures.** A round either completes on every party or fails as a whole: if a party
crashes, :class:`FederatedRoundError` is raised, the server's global model is left as
it was after the last completed round, and the driver's checkpoint
(``global/latest.pth``, replaced atomically after each completed round) is untouched.
Running again resumes from that round: parties restart from the global weights and from
the local state (optimiser momentum, logged curves) each saved after that round in its own
results folder, and every round is seeded with ``(seed, round)``, so a resumed run ends
with the same global model as an uninterrupted one.

**Where it runs** (:mod:`stitch_ops.ray_session`). ``address=None`` starts Ray on this
machine with ``cpus_per_party`` CPUs per party (and stops it afterwards); an ``address``
joins an existing cluster unchanged, and the driver only disconnects afterwards. With
``pin_parties`` party ``p``'s actor is only placed on a node started with the custom
resource ``party_p`` — the node that holds p's data, e.g. ``ray start --address head:6379
--resources '{"party_a": 1}'``; every round records the Ray node each party trained on
(``node_id`` in ``global/rounds.json``). Every node needs ``stitch_ops`` installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stitch_ops.config import NnUNetSchedule
from stitch_ops.errors import UserError
from stitch_ops.nnunet.env import NnUNetRoots, configure, resolve_device
from stitch_ops.nnunet.train import drop_checkpoints
from stitch_ops.outputs import output_file, read_json, write_json
from stitch_ops.ray_session import RayOptions, ray_connection

logger = logging.getLogger(__name__)

GLOBAL = "global"
CHECKPOINT = "latest.pth"
HISTORY = "rounds.json"
LOCAL_STATE = "local_state"


class FederatedRoundError(RuntimeError):
    """A round did not complete on every party; the global model was not changed."""


# ---- canonical states and FedAvg -------------------------------------------------------

def _tensor_key(tensor: torch.Tensor) -> tuple[Any, ...] | None:
    if tensor.numel() == 0:
        return None
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tuple(tensor.stride()), tensor.dtype)


def state_aliases(module: torch.nn.Module) -> dict[str, str]:
    """Every ``state_dict`` name → the canonical name of its tensor (the first name under
    which ``state_dict`` lists the same tensor)."""
    first: dict[tuple[Any, ...], str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in module.state_dict().items():
        key = _tensor_key(tensor)
        aliases[name] = first.setdefault(key, name) if key is not None else name
    return aliases


def canonical_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One detached CPU copy per distinct tensor of ``module``'s ``state_dict``."""
    aliases = state_aliases(module)
    state = module.state_dict()
    return {name: state[name].detach().cpu().clone() for name, canonical in aliases.items() if name == canonical}


def load_canonical_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a canonical state into ``module`` under every name of each tensor (strictly)."""
    aliases = state_aliases(module)
    missing = sorted(set(aliases.values()) - set(state))
    unexpected = sorted(set(state) - set(aliases.values()))
    if missing or unexpected:
        raise ValueError(f"canonical state does not fit the network: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    module.load_state_dict({name: state[canonical] for name, canonical in aliases.items()}, strict=True)


def fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted average of canonical states (FedAvg): ``Σ w_i x_i / Σ w_i`` for every
    floating-point tensor, computed in float64 and cast back; integer tensors (counters
    such as ``num_batches_tracked``) are taken from the first state. Inputs are not changed.

    Raises:
        ValueError: no states, mismatched keys or shapes, or non-positive weights.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"fedavg needs one weight per state, got {len(states)} states and {len(weights)} weights")
    if any(not w > 0 for w in weights):
        raise ValueError(f"fedavg weights must be positive (training-set sizes), got {list(weights)}")
    keys = list(states[0])
    for index, state in enumerate(states[1:], start=1):
        if set(state) != set(keys):
            raise ValueError(f"state {index} has different parameters: "
                             f"{sorted(set(state).symmetric_difference(keys))[:5]}")
    total = float(sum(weights))
    averaged: dict[str, torch.Tensor] = {}
    for key in keys:
        first = states[0][key]
        if any(state[key].shape != first.shape for state in states):
            raise ValueError(f"parameter {key!r} has different shapes: {[tuple(s[key].shape) for s in states]}")
        if first.is_floating_point():
            acc = sum(float(w) * state[key].detach().to(torch.float64) for state, w in zip(states, weights))
            averaged[key] = (acc / total).to(first.dtype)
        else:
            averaged[key] = first.detach().clone()
    return averaged


class FedAvgServer:
    """The central actor: holds the global model and the number of completed rounds."""

    def __init__(self, state: Mapping[str, torch.Tensor], completed_rounds: int = 0):
        self._state = dict(state)
        self.completed_rounds = completed_rounds

    def state(self) -> dict[str, torch.Tensor]:
        return self._state

    def rounds(self) -> int:
        return self.completed_rounds

    def aggregate(self, round_index: int, weights: Sequence[float], *states: Mapping[str, torch.Tensor]) -> int:
        """Average the parties' states of round ``round_index`` into the global model."""
        if round_index != self.completed_rounds:
            raise FederatedRoundError(f"results of round {round_index} arrived, expected round {self.completed_rounds}")
        self._state = fedavg(states, weights)
        self.completed_rounds += 1
        return self.completed_rounds


# ---- parties ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PartyData:
    """Where one party's preprocessed data is (paths as seen on the party's node)."""

    party: str
    dataset_name: str
    preprocessed_root: Path
    results_root: Path


@dataclass(frozen=True)
class FaultInjection:
    """Make ``party`` crash (process exit) in ``round_index``: for testing recovery."""

    party: str
    round_index: int


class FederatedParty:
    """One party's nnU-Net training, one epoch per call (run as a Ray actor)."""

    def __init__(self, data: PartyData, fold: int, schedule: NnUNetSchedule, crash_at_round: int | None = None,
                 seed: int = 0):
        configure(NnUNetRoots(preprocessed=data.preprocessed_root, results=data.results_root), training=True)
        from stitch_ops.nnunet.trainer import ScheduledTrainer, quiet_stdout, seed_everything

        folder = data.preprocessed_root / data.dataset_name
        plans = schedule.training_plans(read_json(folder / "nnUNetPlans.json", hint="rerun the joint_plans stage"))
        dataset_json = read_json(folder / "dataset.json", hint="rerun the joint_plans stage")
        plans["continue_training"] = True  # nnunetv2 >= 2.7 expects the flag (as train_fold sets it)
        self.data = data
        self.crash_at_round = crash_at_round
        with quiet_stdout():  # an actor's prints reach the driver's console
            self.trainer = ScheduledTrainer(plans=plans, configuration=schedule.configuration, fold=fold,
                                            dataset_json=dataset_json, device=resolve_device(schedule.device))
            self.trainer.apply_schedule(schedule, seed)
            self.trainer.save_every = schedule.epochs + 1  # the global checkpoint is the driver's
            seed_everything(seed, 1)  # the initial global model (party 0's initial weights)
            self.trainer.initialize()
            self.trainer.on_train_start()

    def num_cases(self) -> int:
        """Training cases of this fold (the party's FedAvg weight)."""
        return len(self.trainer.do_split()[0])

    def initial_state(self) -> dict[str, torch.Tensor]:
        return canonical_state(self.trainer.network)

    def mirroring_axes(self) -> tuple[int, ...] | None:
        return self.trainer.inference_allowed_mirroring_axes

    def _local_state_path(self, round_index: int) -> Path:
        return self.data.results_root / LOCAL_STATE / f"after_round_{round_index}.pth"

    def _save_local_state(self, round_index: int) -> None:
        """What FedAvg keeps local (optimiser state, logged curves), after ``round_index``;
        written atomically, the two newest kept (a kill between this party's save and the
        driver's global checkpoint leaves the previous round's state for the resume)."""
        path = self._local_state_path(round_index)
        scaler = self.trainer.grad_scaler
        record = {"round": round_index, "optimizer": self.trainer.optimizer.state_dict(),
                  "grad_scaler": scaler.state_dict() if scaler is not None else None,
                  "logging": self.trainer.logger.get_checkpoint(), "best_ema": self.trainer._best_ema}
        with output_file(path) as tmp:
            torch.save(record, tmp)
        for old in path.parent.glob("after_round_*.pth"):
            if int(old.stem.removeprefix("after_round_")) < round_index - 1:
                old.unlink()

    def restore(self, completed_rounds: int) -> bool:
        """Resume this party's local state saved after round ``completed_rounds - 1``;
        False (and a fresh optimiser) when there is none."""
        path = self._local_state_path(completed_rounds - 1)
        if not path.is_file():
            return False
        # the party's own file, written by _save_local_state (the logger holds plain Python lists)
        record = torch.load(path, map_location=self.trainer.device, weights_only=False)
        self.trainer.optimizer.load_state_dict(record["optimizer"])
        if self.trainer.grad_scaler is not None and record["grad_scaler"] is not None:
            self.trainer.grad_scaler.load_state_dict(record["grad_scaler"])
        self.trainer.logger.load_checkpoint(record["logging"])
        self.trainer._best_ema = record["best_ema"]
        return True

    def train_round(self, round_index: int, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
        """Start from the global ``state``, train one epoch; return (new state, metrics)."""
        if self.crash_at_round == round_index:
            os._exit(17)  # a hard crash, as when a node dies
        load_canonical_state(self.trainer.network, state)
        self.trainer.current_epoch = round_index
        self.trainer.run_epoch()
        self._save_local_state(round_index)
        logged = self.trainer.logger
        metrics = {"party": self.data.party, "round": round_index,
                   "train_loss": float(logged.get_value("train_losses", step=-1)),
                   "val_loss": float(logged.get_value("val_losses", step=-1)),
                   "pseudo_dice": float(logged.get_value("ema_fg_dice", step=-1)),
                   "lr": float(self.trainer.optimizer.param_groups[0]["lr"]), "node_id": self.node_id()}
        return canonical_state(self.trainer.network), metrics

    @staticmethod
    def node_id() -> str | None:
        """The Ray node this party runs on (``None`` outside Ray): where its data was read."""
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


# ---- the driver -------------------------------------------------------------------------

def _check_party_resources(parties: Sequence[str]) -> None:
    """With ``pin_parties`` a party whose resource no node offers would wait forever."""
    import ray

    offered = ray.cluster_resources()
    missing = [f"party_{p}" for p in parties if offered.get(f"party_{p}", 0) < 1]
    if missing:
        raise UserError(f"federated.pin_parties is true but no node of the Ray cluster offers {missing}; start "
                        "each party's node with `ray start --address HEAD:PORT --resources '{\"party_a\": 1}'` "
                        "(party_b likewise), or set federated.pin_parties: false")


class GlobalCheckpoint:
    """The global model after the last completed round, replaced atomically."""

    def __init__(self, folder: Path):
        self.folder = folder

    def load(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        path = self.folder / CHECKPOINT
        if not path.is_file():
            return None
        record = torch.load(path, map_location="cpu", weights_only=True)
        return int(record["completed_rounds"]), record["state"]

    def save(self, completed_rounds: int, state: Mapping[str, torch.Tensor], history: list[dict]) -> None:
        with output_file(self.folder / CHECKPOINT) as tmp:
            torch.save({"completed_rounds": completed_rounds, "state": dict(state)}, tmp)
        write_json(self.folder / HISTORY, history)

    def history(self) -> list[dict]:
        path = self.folder / HISTORY
        return read_json(path, hint="delete the federated model folder to start over") if path.is_file() else []


def drop_training_state(results: Path) -> list[Path]:
    """Delete what only an unfinished run reads, once its global model is exported: the
    global checkpoint (``global/latest.pth``), every party's local state (optimiser momentum,
    ``local_state/``) and any nnU-Net checkpoint of the parties; returns what was removed.
    ``global/rounds.json`` (the per-round curve a finished run replays) stays. A finished run
    is recognised by its export alone (``export/weights.pth``)."""
    removed = sorted([*(results / GLOBAL).glob(f"{CHECKPOINT}*"), *results.rglob(f"{LOCAL_STATE}/*.pth*")])
    for path in removed:
        path.unlink()
    for folder in results.rglob(LOCAL_STATE):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return sorted(removed + drop_checkpoints(results))


CURVE_KEYS = ("train_loss", "val_loss", "pseudo_dice", "lr")


def round_curve(record: Mapping[str, Any]) -> dict[str, float]:
    """One round of the history as training-curve values: each party's (``a/train_loss``, ...)
    and the global ones (``train_loss``, ...: the parties' values weighted like FedAvg)."""
    parties = record["parties"]
    weights = [float(w) for w in record["weights"]]
    values = {f"{m['party']}/{key}": float(m[key]) for m in parties for key in CURVE_KEYS}
    for key in CURVE_KEYS:
        values[key] = sum(w * float(m[key]) for w, m in zip(weights, parties)) / sum(weights)
    return values


def train_federated(parties: Sequence[PartyData], fold: int, schedule: NnUNetSchedule, checkpoint_dir: Path, *,
                    ray_options: RayOptions = RayOptions(), fault: FaultInjection | None = None,
                    seed: int = 0, progress: bool = True,
                    on_round: Callable[[int, Mapping[str, float]], None] | None = None,
                    ) -> tuple[dict[str, torch.Tensor], tuple[int, ...] | None, list[dict]]:
    """Run ``schedule.epochs`` FedAvg rounds (resuming after the last completed one).

    ``on_round`` is called with (round, :func:`round_curve`) after every completed round,
    first for the rounds completed before a resume (a live MLflow run, one step per round).

    Returns:
        (global canonical state, the networks' mirroring axes, per-round history).

    Raises:
        FederatedRoundError: a party failed in a round; the checkpoint holds the global
            model of the last completed round, and calling again resumes from there.
    """
    with ray_connection(ray_options, len(parties)):
        return _train_federated(parties, fold, schedule, GlobalCheckpoint(checkpoint_dir), ray_options, fault,
                                seed, progress, on_round)


def _train_federated(parties: Sequence[PartyData], fold: int, schedule: NnUNetSchedule, checkpoint: GlobalCheckpoint,
                     ray_options: RayOptions, fault: FaultInjection | None, seed: int, progress: bool,
                     on_round: Callable[[int, Mapping[str, float]], None] | None,
                     ) -> tuple[dict[str, torch.Tensor], tuple[int, ...] | None, list[dict]]:
    """:func:`train_federated` once connected to Ray."""
    import ray
    from ray.exceptions import RayError
    from tqdm import tqdm

    history = checkpoint.history()
    resumed = checkpoint.load()
    if resumed is not None:
        history = history[:resumed[0]]
    for record in history if on_round is not None else []:
        on_round(int(record["round"]), round_curve(record))
    if ray_options.pin_parties:
        _check_party_resources([p.party for p in parties])
    actor_class = ray.remote(FederatedParty)
    actors = []
    server = None
    try:
        for data in parties:
            resources = {f"party_{data.party}": 1} if ray_options.pin_parties else None
            crash = fault.round_index if fault is not None and fault.party == data.party else None
            actors.append(actor_class.options(num_cpus=ray_options.cpus_per_party, resources=resources,
                                              max_restarts=0)
                          .remote(data, fold, schedule, crash, seed))
        try:
            sizes = ray.get([a.num_cases.remote() for a in actors])
            nodes = ray.get([a.node_id.remote() for a in actors])
            mirroring = ray.get(actors[0].mirroring_axes.remote())
            if resumed is None:
                completed, state = 0, ray.get(actors[0].initial_state.remote())
            else:
                completed, state = resumed
                logger.info("resuming federated training after round %d of %d", completed, schedule.epochs)
                restored = ray.get([a.restore.remote(completed) for a in actors])
                for data, ok in zip(parties, restored):
                    if not ok:
                        logger.warning("party %s has no local state of round %d: its optimiser starts afresh",
                                       data.party, completed - 1)
        except RayError as err:
            raise FederatedRoundError(f"a party failed to start: {err}") from err
        server = ray.remote(num_cpus=0)(FedAvgServer).remote(state, completed)
        logger.info("FedAvg over parties %s with training-set sizes %s on Ray nodes %s", [p.party for p in parties],
                    sizes, nodes)
        with tqdm(total=schedule.epochs, initial=completed, desc="FedAvg rounds", disable=not progress) as bar:
            for round_index in range(completed, schedule.epochs):
                global_state = server.state.remote()
                calls = [a.train_round.options(num_returns=2).remote(round_index, global_state) for a in actors]
                try:
                    metrics = ray.get([m for _, m in calls])
                except RayError as err:
                    raise FederatedRoundError(
                        f"round {round_index} failed on a party ({type(err).__name__}: {str(err).splitlines()[0]}); "
                        f"the global model of round {round_index} is unchanged in {checkpoint.folder}; "
                        f"run again to resume") from err
                ray.get(server.aggregate.remote(round_index, sizes, *[s for s, _ in calls]))
                state = ray.get(server.state.remote())
                history.append({"round": round_index, "weights": sizes, "parties": metrics})
                checkpoint.save(round_index + 1, state, history)
                if on_round is not None:
                    on_round(round_index, round_curve(history[-1]))
                bar.update()
                bar.set_postfix(dice=" ".join(f"{m['party']}:{m['pseudo_dice']:.3f}" for m in metrics))
    finally:
        for actor in actors + ([server] if server is not None else []):
            ray.kill(actor)
    final = checkpoint.load()
    assert final is not None and final[0] == schedule.epochs
    return final[1], mirroring, history
