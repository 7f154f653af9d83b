"""The warm-start server of ``stitch-ops repro``: a stage command handed to it runs in a child
forked from the server, with the command's arguments, directory, environment, streams and
exit status, and stops when the command is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stitch_ops.warm_start import SOCKET_VARIABLE, server_command

REPO = Path(__file__).resolve().parents[1]
STAGE = '''
import os, sys, time
from stitch_ops.warm_start import stage_main

def main():
    print("pid", os.getpid(), "ppid", os.getppid(), "cwd", os.getcwd(), "torch", "torch" in sys.modules,
          "variable", os.environ.get("STITCH_OPS_WARM_START"), "mine", os.environ.get("MINE"), "args", sys.argv[1:],
          flush=True)
    print("to stderr", file=sys.stderr)
    if sys.argv[1] == "seeds":
        import random, numpy, torch
        print(random.random(), numpy.random.random(), torch.initial_seed())
    if sys.argv[1] == "sleep":
        open(sys.argv[2], "w").close()
        time.sleep(60)
    return int(sys.argv[1]) if sys.argv[1].isdigit() else 0

if __name__ == "__main__":
    sys.exit(stage_main(main))
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, dict[str, str]]]:
    """A warm-start server and the environment of a stage command that uses it; a toy stage
    module ``toy_stage`` is importable from both."""
    folder = tmp_path_factory.mktemp("warm")
    (folder / "toy_stage.py").write_text(STAGE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}
    socket_path = folder / "warm.socket"
    process = subprocess.Popen(server_command(socket_path), env=env)
    deadline = time.monotonic() + 120
    while not socket_path.exists():  # bound once the server has imported the libraries
        assert process.poll() is None and time.monotonic() < deadline, "the warm-start server did not start"
        time.sleep(0.1)
    yield process, {**env, SOCKET_VARIABLE: str(socket_path), "MINE": "here"}
    process.terminate()
    process.wait(timeout=30)


def test_a_stage_runs_in_a_child_of_the_server_with_its_own_args_cwd_env_and_streams(server, tmp_path: Path):
    process, env = server
    result = subprocess.run([sys.executable, "-m", "toy_stage", "3", "--flag"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert result.stdout.split()[2:] == ["ppid", str(process.pid), "cwd", str(tmp_path), "torch", "True",
                                     "variable", "None", "mine", "here", "args", "['3',", "'--flag']"]
    assert result.stderr == "to stderr\n"


def test_without_the_variable_or_the_server_the_stage_runs_in_its_own_process(server, tmp_path: Path):
    _, env = server
    for without in ({k: v for k, v in env.items() if k != SOCKET_VARIABLE},
                    {**env, SOCKET_VARIABLE: str(tmp_path / "no.socket")}):
        result = subprocess.run([sys.executable, "-m", "toy_stage", "0"], cwd=tmp_path, env=without,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[2:8] == ["ppid", str(os.getpid()), "cwd", str(tmp_path), "torch", "False"]


def test_stopping_the_stage_command_stops_its_child(server, tmp_path: Path):
    _, env = server
    started = tmp_path / "started"
    command = subprocess.Popen([sys.executable, "-m", "toy_stage", "sleep", str(started)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "the stage did not start"
        time.sleep(0.1)
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=30) == 128 + signal.SIGTERM
    child = int(command.stdout.read().split()[1])
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_each_stage_draws_fresh_random_seeds_as_a_new_process_does(server, tmp_path: Path):
    _, env = server
    seeds = [subprocess.run([sys.executable, "-m", "toy_stage", "seeds"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=True).stdout.splitlines()[1].split() for _ in range(2)]
    assert all(first != second for first, second in zip(*seeds)), seeds
