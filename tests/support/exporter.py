"""``chi-redis metrics`` subprocesses and plain HTTP probes of health and metrics pages."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .ports import free_port
from .processes import ROOT, clean_env
from .waiting import wait_until

CHI = str(Path(sys.executable).parent / "chi-redis")


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    """GET ``url``: (status, body); an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """GET ``url`` and decode its JSON body."""
    status, body = get(url)
    return status, json.loads(body)


def answers(url: str) -> bool:
    """Whether something serves ``url`` (any status)."""
    try:
        get(url, timeout=2)
        return True
    except OSError:
        return False


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """The samples of a Prometheus page: ``(name, sorted labels) -> value``."""
    status, body = get(url)
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value (None when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))))


class Exporter:
    """``chi-redis metrics --port P`` on a free port; stopped by the PID we started."""

    def __init__(self, url: str, ns: str, log: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [CHI, "metrics", "--port", str(self.port), "--redis-url", url,
               "--namespace", ns, *args]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=clean_env(**env), stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_until(lambda: self._exited() or answers(self.base + "/healthz"), 60,
                   "the exporter's /healthz", interval=0.05)
        assert self.proc.poll() is None, self.output()

    def _exited(self) -> bool:
        return self.proc.poll() is not None

    def metrics(self) -> Samples:
        return scrape(self.base + "/metrics")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM; returns the exit code (SIGKILL after 20 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return int(self.proc.returncode)
