"""The ``backend`` fixture of the runtime conformance suite (test_runtime_conformance*.py):
parametrised over every backend that has what a test ``needs`` (support/conformance.py).
test_event_store_contract.py defines a ``backend`` fixture of its own, which wins there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.conformance import Conformance, generate, open_backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.module.__name__.rpartition(".")[
            2].startswith("test_runtime_conformance"):
        generate(metafunc)


@pytest.fixture
def backend(request: pytest.FixtureRequest, ns: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Conformance]:
    with open_backend(request.param, ns, tmp_path, monkeypatch) as conformance:
        yield conformance
