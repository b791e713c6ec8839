"""The example app's own tests (handlers/tests) and the README's "Testing your handlers"
example pass, each in a fresh interpreter: importing the app registers its payload classes
for the whole process, and the README example is a test file of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pytest(target: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHI_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         str(target)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def test_the_example_apps_own_tests_pass() -> None:
    done = _pytest(ROOT / "handlers" / "tests", ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "6 passed" in done.stdout.splitlines()[-1]


def test_the_readme_testing_example_passes_as_written(tmp_path: Path) -> None:
    section = (ROOT / "README.md").read_text().split("## Testing your handlers\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    test_file = tmp_path / "test_readme_example.py"
    test_file.write_text(code)
    done = _pytest(test_file, tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout.splitlines()[-1]
