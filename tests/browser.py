"""Open a page in headless Chromium and report what a reader would see go wrong.

Talks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (the browser reads
commands on fd 3 and writes replies and events on fd 4, NUL-terminated JSON): no port, no
extra package. It loads the page, waits for its ``load`` event, reads every ``<img>``'s
``naturalWidth`` (0 when an image failed to decode or load) and collects the errors the page
logged: console errors, uncaught exceptions and log entries of level ``error`` (failed
resource loads, blocked requests).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    """Path of a Chromium binary on PATH, or None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@dataclass(frozen=True)
class PageCheck:
    """What the browser saw: ``images`` as (alt text, naturalWidth), ``errors`` as text."""

    images: list[tuple[str, int]]
    errors: list[str]


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        return self.next_id

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.read_fd], [], [], remaining)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise ConnectionError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for index, message in enumerate(self.events):
            if message.get("method") == event:
                return self.events.pop(index)
        while True:
            message = self._read_message(deadline)
            if message.get("method") == event:
                return message
            if "method" in message:
                self.events.append(message)


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
    return errors


def check_page(page: Path, timeout: float = 90) -> PageCheck:
    """Load ``page`` (a local HTML file) in headless Chromium; its images and logged errors.

    Raises:
        FileNotFoundError: no Chromium on PATH.
        TimeoutError: the page did not finish loading within ``timeout`` seconds.
    """
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH: apt-get install -y chromium (.ci/run does this)")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def as_fds_3_and_4() -> None:  # runs in the child before exec; pass_fds keeps 3 and 4 open
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    with tempfile.TemporaryDirectory(prefix="stitch_ops_chromium_") as profile:
        process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4)
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                timeout=timeout)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.call(f"{domain}.enable", session=session, timeout=timeout)
            pipe.call("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session, timeout=timeout)
            pipe.wait_for("Page.loadEventFired", timeout=timeout)
            result = pipe.call("Runtime.evaluate", {
                "expression": "JSON.stringify(Array.from(document.images).map(i => [i.alt, i.naturalWidth]))",
                "returnByValue": True}, session=session, timeout=timeout)
            images = [tuple(item) for item in json.loads(result["result"]["value"])]
            try:
                pipe.call("Browser.close", timeout=10)
            except (ConnectionError, TimeoutError):
                pass
            return PageCheck(images=images, errors=_errors(pipe.events))
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
