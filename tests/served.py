"""A real `kpb serve` (gunicorn) process on a free loopback port, for tests that need one.

Its output goes to a file, not a pipe: an unread pipe fills up and blocks the workers' logging,
which looks exactly like a hung server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import ROOT
from keycloak_policy_bridge.cli.serve import restamped_copy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_copy(source: Path, target: Path) -> Path:
    """A copy whose manifest says it was generated now: the server judges freshness by the
    wall clock, and the shipped example ages past the acme policy's 72 h limit."""
    return restamped_copy(source, target)


class Served:
    """`kpb serve ARGS` started with ``env``; ``base`` is its URL once /readyz says ready."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready_timeout: float = 30) -> None:
        port = free_port()
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "keycloak_policy_bridge.cli", "serve", "--bind", f"127.0.0.1:{port}", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2) as response:
                    assert json.load(response)["ready"] is True
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # a busy machine may answer after the 2 s: ask again
                if self.process.poll() is not None or time.monotonic() > deadline:
                    output = self.stop()
                    raise AssertionError(f"kpb serve did not become ready in {ready_timeout:.0f} s:\n{output}") from None
                time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        """Stop the whole process group (master and workers); returns everything it printed."""
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.output()


def request(base: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request on a new connection (so gunicorn may route it to either worker): (status, JSON body)."""
    sent = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
    req = urllib.request.Request(base + path, data=body, headers=sent, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)
