"""Stage processes forked from a parent that has already imported torch, nnU-Net and MLflow.

Every stage of ``dvc.yaml`` is a ``python -m stitch_ops...`` process, and each spends 8-12 s
of CPU importing torch, nnU-Net's trainer and predictor and MLflow before its own work (a
``smoke`` basis-model training: 12 of its 16 s; ``smoke`` runs about 90 stages). So
``stitch-ops repro`` starts a server (:func:`serve`) that imports those libraries once and
listens on a Unix socket, and passes the socket's path to its ``dvc repro`` processes in
``STITCH_OPS_WARM_START``. A stage command that finds it (:func:`stage_main`) hands its
module, arguments, working directory, environment and standard streams to the server, which
forks a child that runs the stage exactly as ``python -m`` would (``runpy``); the command
then exits with the child's status, and forwards Ctrl-C or a kill to it.

What runs does not change: DVC starts the same ``cmd``, checks the same deps and hashes
the same outs; the child runs the stage's current code (no ``stitch_ops`` module is kept
from the server) in the stage's environment (the nnU-Net defaults the stages would set,
:data:`~stitch_ops.config.NNUNET_CPU_DEFAULTS`, are set before the libraries read them at
import), with fresh random seeds as a new process has. Only the third-party libraries come
imported. Without the variable (a plain ``dvc repro``, a test, a user's shell), or when the
server cannot be reached, the stage runs in its own process as always.
"""

from __future__ import annotations

import atexit
import errno
import importlib
import io
import json
import os
import random
import runpy
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from stitch_ops.config import NNUNET_CPU_DEFAULTS

SOCKET_VARIABLE = "STITCH_OPS_WARM_START"
PRELOADED = ("torch", "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
             "nnunetv2.inference.predict_from_raw_data", "mlflow", "scipy.ndimage")
"""What every stage would import (a training imports torch._dynamo, seaborn and matplotlib
through nnU-Net's trainer)."""
_LENGTH = struct.Struct("!Q")
_STREAMS = 3  # stdin, stdout, stderr


def stage_main(main: Callable[[], int | None]) -> int | None:
    """The exit status of this stage command: run by the warm-start server's child when
    ``STITCH_OPS_WARM_START`` names a server that answers, else ``main()`` here."""
    status = _forward(os.environ.get(SOCKET_VARIABLE))
    return main() if status is None else status


def _forward(socket_path: str | None) -> int | None:
    if not socket_path:
        return None
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:  # run as a file, not with -m: nothing to hand over
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(socket_path)
    except OSError:
        connection.close()
        return None  # no server (it stopped, or was never started): run here
    request = json.dumps({"module": spec.name, "args": sys.argv[1:], "cwd": os.getcwd(),
                          "env": {k: v for k, v in os.environ.items() if k != SOCKET_VARIABLE}}).encode()
    with connection:
        socket.send_fds(connection, [_LENGTH.pack(len(request))], list(range(_STREAMS)))
        connection.sendall(request)
        reader = connection.makefile("rb")
        pid = _read_number(reader)
        if pid is None:
            return _lost()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda received, _frame: _signal_child(pid, received))
        status = _read_number(reader)
        return _lost() if status is None else status


def _read_number(reader: io.BufferedReader) -> int | None:
    data = reader.read(_LENGTH.size)
    return _LENGTH.unpack(data)[0] if len(data) == _LENGTH.size else None


def _signal_child(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _lost() -> int:
    print(f"stitch-ops: the warm-start server ({SOCKET_VARIABLE}) closed the connection before the stage "
          f"ended; run the stage again", file=sys.stderr)
    return 1


def server_command(socket_path: Path) -> list[str]:
    """The command line of a server listening on ``socket_path`` (:func:`serve`). Not a
    ``python -m`` entry point: nothing a user runs."""
    return [sys.executable, "-c", "import sys; from stitch_ops.warm_start import serve; serve(sys.argv[1])",
            str(socket_path)]


def serve(socket_path: str | Path) -> None:
    """Import the libraries, then listen on ``socket_path`` and fork one child per stage
    command that connects, until SIGTERM. A stage that starts before the socket exists (the
    imports take about 9 s) runs in a process of its own instead of waiting."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for key, value in NNUNET_CPU_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for name in PRELOADED:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(16)
    running: dict[int, socket.socket] = {}
    stopped: set[int] = set()
    while True:
        watched = [c for pid, c in running.items() if pid not in stopped]
        readable, _, _ = select.select([listener, *watched], [], [], 0.2)
        for ready in readable:
            if ready is listener:
                connection = listener.accept()[0]
                pid = _fork_stage(connection, listener, running)
                if pid is not None:
                    running[pid] = connection
            else:  # the stage command went away (killed): stop its child
                pid = next(pid for pid, c in running.items() if c is ready)
                _signal_child(pid, signal.SIGTERM)
                stopped.add(pid)
        for pid in _reap(running):
            stopped.discard(pid)


def _fork_stage(connection: socket.socket, listener: socket.socket, running: dict[int, socket.socket]) -> int | None:
    try:
        header, streams, _, _ = socket.recv_fds(connection, _LENGTH.size, _STREAMS)
        request = json.loads(connection.makefile("rb").read(_LENGTH.unpack(header)[0]))
    except (OSError, ValueError, struct.error):
        connection.close()
        return None
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in running.values():
            other.close()
        connection.close()
        status = 1
        try:  # the child must never return into the server's loop, whatever fails
            status = _run_stage(request, streams)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    for stream in streams:
        os.close(stream)
    connection.sendall(_LENGTH.pack(pid))
    return pid


def _reap(running: dict[int, socket.socket]) -> list[int]:
    """Send each ended child's exit status to its stage command (a shell's: 128 + the signal
    that killed it); the ended children."""
    ended = []
    for pid in list(running):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 1 << 8
        if done:
            code = os.waitstatus_to_exitcode(status)
            connection = running.pop(pid)
            try:
                connection.sendall(_LENGTH.pack(code if code >= 0 else 128 - code))
            except OSError as err:
                if err.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
            connection.close()
            ended.append(pid)
    return ended


def _run_stage(request: dict, streams: list[int]) -> int:
    """In the forked child: become the stage's process and run its module as ``python -m``
    would; the exit status."""
    for target, stream in enumerate(streams):
        os.dup2(stream, target)
        os.close(stream)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=sys.stdin.encoding)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=sys.stdout.encoding,
                                  line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=sys.stderr.encoding,
                                  errors="backslashreplace", line_buffering=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name in [m for m in sys.modules if m == "stitch_ops" or m.startswith("stitch_ops.")]:
        del sys.modules[name]  # the stage imports its current code
    random.seed()  # a new process's generators start from fresh entropy; a fork's would repeat the server's
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    sys.argv = [request["module"], *request["args"]]
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    except BaseException:  # what the interpreter would print before exiting 1
        traceback.print_exc()
        status = 1
    _shut_down()
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _shut_down() -> None:
    """What the interpreter does on exit: wait for non-daemon threads, run ``atexit``
    handlers (MLflow ends its runs, multiprocessing its pools), flush the streams."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
