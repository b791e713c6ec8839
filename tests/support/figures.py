"""The figures of a reliability case, written to ``.artifacts/reliability/<case>.json``.

Each case records what it measured (the checker's counts, recovery times, memory peaks,
dead-letter counts, error texts) with :func:`record`; ``scripts/reliability-report`` turns
the folder into the table docs/reliability.md shows.  ``CHI_RELIABILITY_ARTIFACTS`` moves the
folder (the default is ``.artifacts/reliability`` under the repository).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .processes import ROOT

ENV = "CHI_RELIABILITY_ARTIFACTS"


def artifacts_dir() -> Path:
    folder = Path(os.environ.get(ENV) or ROOT / ".artifacts" / "reliability")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def record(case: str, **figures: Any) -> Path:
    """Write (replace) the figures of ``case``; returns the file written."""
    path = artifacts_dir() / f"{case}.json"
    body = {"case": case, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **figures}
    path.write_text(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")
    return path
