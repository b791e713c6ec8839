"""Every code block of the README and docs/*.md runs as written.

How the Markdown is read:

- a ``python``, ``sh``, ``bash``, ``console``, ``shell`` or ``yaml`` fence is code: it runs,
  unless an HTML comment ``<!-- not run: REASON -->`` stands on the line right before the
  fence; a yaml block is a configuration file, and "runs" means ``chi-redis config check``
  accepts it;
- a ``text`` fence is a diagram or a program's output, not code; a fence with no language
  is an error (say what it is);
- a python block whose first line is ``# NAME.py`` is a module: it is written to NAME.py in
  the directory every block runs in (the others import it), and imported once to check it.

The blocks run in document order in one temporary directory, against the real Redis in a
namespace of their own (``CHI_REDIS_URL``, ``CHI_NAMESPACE``), with this venv's ``bin`` first
on ``PATH``: python blocks as scripts, shell blocks with ``bash -euo pipefail``.  The README's
worker command (marked: it never exits) is started by the test itself before the blocks
run, and the handlers' output is checked: ``event.data`` is the class, as the README says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from support import REDIS_URL, wait_until
from support.processes import ROOT, WorkerProcess, worker_env

from chi_redis import EventBus

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = {"python", "sh", "bash", "console", "shell", "yaml"}
DATA = {"text"}
_FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
_MARK = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$")
_MODULE = re.compile(r"#\s*([A-Za-z_]\w*)\.py\s*$")
BIN = str(Path(sys.executable).parent)


@dataclass
class Block:
    """One fenced block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason, when marked

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def module(self) -> str | None:
        first = self.code.splitlines()[0] if self.code else ""
        m = _MODULE.fullmatch(first) if self.lang == "python" else None
        return m.group(1) if m else None


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, with their "not run" marks."""
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        assert end is not None, f"{path}:{i + 1}: unclosed fence"
        mark = _MARK.match(lines[i - 1].strip()) if i else None
        out.append(Block(path, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                         mark.group(1) if mark else None))
        i = end + 1
    return out


def stray_marks(path: Path) -> list[int]:
    """Lines with a "not run" mark that is not right before a fence."""
    lines = path.read_text().splitlines()
    return [n + 1 for n, line in enumerate(lines) if _MARK.match(line.strip())
            and not (n + 1 < len(lines) and _FENCE.match(lines[n + 1]))]


def test_every_block_is_code_that_runs_data_or_marked() -> None:
    found = [b for p in DOCS for b in blocks(p)]
    assert any(b.lang == "python" for b in found)  # the parser found the README's blocks
    for b in found:
        assert b.lang in CODE | DATA, f"{b.where}: say what the block is (```python, ```text…)"
        assert b.lang in CODE or b.not_run is None, f"{b.where}: a text block is never run"
    for p in DOCS:
        assert not stray_marks(p), f"{p}: a 'not run' mark must stand right before a fence"


class Runner:
    """Runs blocks in one directory, against one namespace; remembers what ran."""

    def __init__(self, tmp: Path, ns: str) -> None:
        self.tmp = tmp
        self.env = worker_env(REDIS_URL, ns, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        self.env["PYTHONPATH"] = os.pathsep.join([str(tmp), self.env["PYTHONPATH"]])
        self.ran: list[str] = []

    def write_modules(self, found: list[Block]) -> None:
        for b in found:
            if b.module and b.not_run is None:
                (self.tmp / f"{b.module}.py").write_text(b.code)

    def run(self, b: Block) -> subprocess.CompletedProcess[str]:
        if b.lang == "python":
            argv = [sys.executable, "-c", f"import {b.module}"] if b.module else [
                sys.executable, "-"]
        elif b.lang == "yaml":
            config = self.tmp / f"block-{len(self.ran)}.yaml"
            config.write_text(b.code)
            argv = [f"{BIN}/chi-redis", "config", "check", str(config)]
        else:
            argv = ["bash", "-euo", "pipefail", "-s"]
        stdin = b.code if b.lang in ("python", "sh", "bash", "console", "shell") else None
        proc = subprocess.run(argv, input=None if b.module else stdin, cwd=self.tmp,
                              env=self.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{b.where} failed:\n{b.code}\n{proc.stdout}{proc.stderr}"
        self.ran.append(b.where)
        return proc


def _unmarked(found: list[Block]) -> list[str]:
    return [b.where for b in found if b.lang in CODE and b.not_run is None]


@pytest.mark.redis
def test_the_readme_runs_as_written(tmp_path: Path, ns: str, real_client: redis.Redis) -> None:
    found = blocks(ROOT / "README.md")
    runner = Runner(tmp_path, ns)
    runner.write_modules(found)
    [worker_block] = [b for b in found if b.code.startswith("dramatiq chi_redis.worker ")]
    module = worker_block.code.split()[2]
    assert worker_block.not_run and (tmp_path / f"{module}.py").exists()
    # The README's worker command, as a test worker process (one process, its own session).
    worker = WorkerProcess(module, runner.env, tmp_path / "worker.log", threads=2)
    worker.start()
    try:
        bus = EventBus(real_client, namespace=ns)
        wait_until(lambda: "is ready for action" in worker.output()
                   and real_client.hexists(bus.keys.subs(), "welcome-email"),
                   60, "the README's worker to start", interval=0.1)
        outputs = [runner.run(b) for b in found if b.lang in CODE and b.not_run is None]
        wait_until(lambda: "welcome mail to a@example.com (event " in worker.output(), 60,
                   "the welcome handler (event.data a UserCreated)", interval=0.1)
        wait_until(lambda: "audit user.created " in worker.output(), 60,
                   "the audit handler", interval=0.1)
        assert "AssertionError" not in worker.output()
    finally:
        worker.stop()
    assert runner.ran == _unmarked(found)
    # What the CLI block printed: the stream id publish printed was found by events get.
    cli_out = "".join(p.stdout for p in outputs)
    assert '"type": "order.paid"' in cli_out and '"order": 1000' in cli_out


@pytest.mark.parametrize("path", DOCS[1:], ids=lambda p: p.name)
@pytest.mark.redis
def test_the_docs_run_as_written(path: Path, tmp_path: Path, ns: str,
                                 real_client: redis.Redis) -> None:
    found = blocks(path)
    runner = Runner(tmp_path, ns)
    runner.write_modules(found)
    for b in found:
        if b.lang in CODE and b.not_run is None:
            runner.run(b)
    assert runner.ran == _unmarked(found)
