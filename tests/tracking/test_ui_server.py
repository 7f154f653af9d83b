"""`stitch-ops tracking ui`'s server handling without MLflow: a stand-in server that starts
slowly and leaves a worker process behind, as ``mlflow server`` does (``huey_consumer``)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stitch_ops.tracking import ui

STAND_IN = textwrap.dedent('''
    import http.server, subprocess, sys, time
    port, delay, pids = int(sys.argv[sys.argv.index("--port") + 1]), float(sys.argv[1]), sys.argv[2]
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(pids, "w").write(str(worker.pid))
    time.sleep(delay)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
''')


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch):
    script = tmp_path / "server.py"
    script.write_text(STAND_IN)

    def use(delay: float) -> Path:
        pids = tmp_path / "worker.pid"
        monkeypatch.setattr(ui, "_mlflow_command", lambda: [sys.executable, str(script), str(delay), str(pids)])
        return pids

    return use


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split(")")[-1].split()[0] == "Z")


def test_a_slow_server_is_waited_for_and_stopped_with_its_workers(stand_in, tmp_path: Path):
    pids = stand_in(delay=3.0)
    with ui.mlflow_server("sqlite:///unused.db") as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        worker = int(pids.read_text())
        assert alive(worker)
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker), "the server's worker outlived it"


def test_a_time_limit_gives_one_clear_error_and_leaves_nothing_running(stand_in):
    pids = stand_in(delay=60.0)
    with pytest.raises(ui.ServerError, match=r"did not answer on http://127.0.0.1:\d+ within 1 s; .* without a time "
                                             r"limit"):
        with ui.mlflow_server("sqlite:///unused.db", timeout_s=1.0):
            pass
    worker = int(pids.read_text())
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker)
