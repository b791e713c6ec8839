"""Fixtures of the observability tests: ``exporters`` starts ``chi-redis metrics`` processes
(stopped at teardown); Dramatiq's delays are shortened for in-process workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.exporter import Exporter
from support.runtime import patch_dramatiq


@pytest.fixture(autouse=True)
def _fast_dramatiq(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_dramatiq(monkeypatch)


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    started: list[Exporter] = []

    def start(url: str, ns: str, *args: str, **env: str) -> Exporter:
        exporter = Exporter(url, ns, tmp_path / f"exporter-{len(started)}.log", *args, **env)
        started.append(exporter)
        return exporter

    yield start
    for e in started:
        e.stop()
