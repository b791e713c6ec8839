"""House rules of the package: its public names import, importing it is cheap and quiet,
and every module stays small enough to read.

Import behaviour is checked in fresh interpreters (``sys.modules`` of the test process has
long been filled by other tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import chi_redis

PACKAGE = Path(chi_redis.__file__).resolve().parent
MAX_LINES = 450
#: Modules other branches are splitting right now; remove each entry when its split merges.
TOO_LONG_FOR_NOW: set[str] = set()


def _run(code: str, *args: str) -> Any:
    """Run ``code`` in a fresh interpreter; it prints one JSON value, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# public names ------------------------------------------------------------------------------
def test_every_public_name_imports() -> None:
    got = _run("""
        import json
        import chi_redis
        ns = {}
        exec("from chi_redis import *", ns)
        missing = [n for n in chi_redis.__all__ if n not in ns or getattr(chi_redis, n) is None]
        print(json.dumps({"all": chi_redis.__all__, "missing": missing}))
    """)
    assert got["all"] and got["missing"] == []
    assert len(set(got["all"])) == len(got["all"])


# start-up ----------------------------------------------------------------------------------
# redis-py 8 imports redis.asyncio from redis/__init__: "import chi_redis" must not import
# redis at all (the names that need it are imported on first use, see chi_redis/__init__.py).
HEAVY = ["redis", "redis.asyncio", "dramatiq", "prometheus_client", "yaml", "click"]


@pytest.fixture(scope="module")
def imported_by_package() -> list[str]:
    """What ``import chi_redis`` pulls in of the heavy third-party packages."""
    names: list[str] = _run("""
        import json, sys
        import chi_redis
        print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in
              {'redis', 'dramatiq', 'prometheus_client', 'yaml', 'click'})))
    """)
    return names


@pytest.mark.parametrize("module", HEAVY)
def test_import_chi_redis_does_not_import(imported_by_package: list[str], module: str) -> None:
    assert not [m for m in imported_by_package if m == module or m.startswith(module + ".")]


def test_the_import_check_sees_what_it_looks_for() -> None:
    # Control: the same listing does see redis once a name that needs it is used.
    names: list[str] = _run("""
        import json, sys
        import chi_redis
        chi_redis.EventBus
        print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'redis')))
    """)
    assert "redis" in names and "redis.asyncio" in names


# no I/O at import ----------------------------------------------------------------------------
# One fresh interpreter, guards installed before the first chi_redis import: every module body
# of the package then runs exactly once, under the guards, whatever the import order.
# Reading files stays allowed (the Lua scripts are package data); writing, connecting,
# resolving names, talking to Redis, spawning processes and starting threads are refused.
GUARDED_IMPORT = """
import builtins, importlib, io, json, pkgutil, socket, subprocess, sys, threading, traceback
import redis

class ImportIO(Exception):
    pass

def refuse(what):
    def blocked(*args, **kwargs):
        raise ImportIO(what + " at import")
    return blocked

real_open = builtins.open

def guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
        raise ImportIO(f"open({file!r}, {mode!r}) at import")
    return real_open(file, mode, *args, **kwargs)

socket.socket.connect = refuse("socket.connect")
socket.socket.connect_ex = refuse("socket.connect_ex")
socket.getaddrinfo = refuse("socket.getaddrinfo")
socket.create_connection = refuse("socket.create_connection")
redis.Redis.execute_command = refuse("Redis.execute_command")
subprocess.Popen.__init__ = refuse("subprocess.Popen")
threading.Thread.start = refuse("Thread.start")
builtins.open = io.open = guarded_open

sys.path[:0] = sys.argv[2:3]
import chi_redis
names = ["chi_redis"] + [
    m.name for m in pkgutil.walk_packages(chi_redis.__path__, "chi_redis.")
    if m.name.rsplit(".", 1)[-1] != "__main__"  # running the program is its purpose
] + [n for n in sys.argv[1].split(",") if n]
failures = {}
for name in names:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failures[name] = "".join(traceback.format_exception_only(exc)).strip()
print(json.dumps({"imported": names, "failures": failures}))
"""


def test_importing_any_module_does_no_io() -> None:
    got = _run(GUARDED_IMPORT, "", "")
    assert "chi_redis.worker" in got["imported"] and "chi_redis.cli.dlq" in got["imported"]
    assert len(got["imported"]) >= 50
    assert got["failures"] == {}


def test_the_io_guard_catches_a_module_that_does_io(tmp_path: Path) -> None:
    (tmp_path / "connects.py").write_text(
        "import socket\nsocket.create_connection(('127.0.0.1', 6379))\n")
    (tmp_path / "pings.py").write_text("import redis\nredis.Redis().ping()\n")
    (tmp_path / "writes.py").write_text(
        "from pathlib import Path\nPath(__file__).with_suffix('.out').write_text('x')\n")
    (tmp_path / "spins.py").write_text(
        "import threading\nthreading.Thread(target=print).start()\n")
    got = _run(GUARDED_IMPORT, "connects,pings,writes,spins", str(tmp_path))
    assert sorted(got["failures"]) == ["connects", "pings", "spins", "writes"]
    assert all("at import" in why for why in got["failures"].values())
    assert not (tmp_path / "writes.out").exists()


# module size ---------------------------------------------------------------------------------
def _line_counts() -> dict[str, int]:
    return {
        p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines())
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def test_every_module_is_at_most_450_lines() -> None:
    counts = _line_counts()
    assert len(counts) >= 50
    too_long = {m: n for m, n in counts.items() if n > MAX_LINES and m not in TOO_LONG_FOR_NOW}
    assert too_long == {}


def test_the_size_allowlist_names_only_modules_still_too_long() -> None:
    # An entry whose module got short (or was removed) must go: the list only ever shrinks.
    counts = _line_counts()
    assert {m for m in TOO_LONG_FOR_NOW if counts.get(m, 0) > MAX_LINES} == TOO_LONG_FOR_NOW


def _function_lengths() -> dict[str, int]:
    import ast

    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno} {node.name}"
                out[name] = (node.end_lineno or node.lineno) - node.lineno + 1
    return out


def test_functions_are_mostly_under_40_lines_and_none_over_80() -> None:
    lengths = _function_lengths()
    assert len(lengths) > 300  # the walk sees the whole package
    assert {f: n for f, n in lengths.items() if n > 80} == {}
    long = [f for f, n in lengths.items() if n > 40]
    assert len(long) <= 0.05 * len(lengths), sorted(long)
