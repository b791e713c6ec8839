"""Static security rules of the package and the example handlers, read from their syntax
trees (a comment or a string mentioning ``pickle`` fools no check here):

- no module that runs code from data: ``pickle``, ``marshal``, ``shelve``, ``dill``,
  ``cloudpickle``, ``jsonpickle``; no ``yaml.load`` / ``unsafe_load`` / ``full_load`` /
  ``yaml.Loader`` (only ``safe_load``); no ``eval``, ``exec`` or ``__import__`` builtins;
  no Dramatiq ``PickleEncoder``;
- every ``# nosec`` (scripts/security runs bandit) names the finding it silences and says why;
- the process-wide Dramatiq encoder is chi-redis's msgspec encoder once ``chi_redis.worker``
  is imported or a broker is built, never Dramatiq's pickle encoder.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import ROOT, clean_env
from support.servers import RedisServer

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                     "jsonpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "__import__"}
FORBIDDEN_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load",
                  "full_load_all", "Loader", "UnsafeLoader", "FullLoader"}
SOURCES = [ROOT / "chi_redis", ROOT / "handlers"]


def python_files() -> list[Path]:
    return sorted(p for d in SOURCES for p in d.rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a Name/Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _import_findings(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                yield f"import {alias.name}"
    elif isinstance(node, ast.ImportFrom) and node.module:
        top = node.module.split(".")[0]
        names = {a.name for a in node.names}
        if top in FORBIDDEN_MODULES:
            yield f"from {node.module} import ..."
        if top == "yaml" and names & FORBIDDEN_YAML:
            yield f"from yaml import {sorted(names & FORBIDDEN_YAML)}"
        if "PickleEncoder" in names:
            yield "PickleEncoder"


def _use_findings(node: ast.AST, yaml_names: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Call):
        name = _dotted(node.func)
        if name in FORBIDDEN_CALLS or name in {f"builtins.{n}" for n in FORBIDDEN_CALLS}:
            yield f"{name}()"
        if name in {"importlib.import_module"} and node.args and isinstance(
                node.args[0], ast.Constant) and str(node.args[0].value) in FORBIDDEN_MODULES:
            yield f"import_module({node.args[0].value!r})"
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        if base in yaml_names and node.attr in FORBIDDEN_YAML:
            yield f"{base}.{node.attr}"
        if node.attr == "PickleEncoder":
            yield f"{base}.PickleEncoder"
    if isinstance(node, ast.Name) and node.id == "PickleEncoder":
        yield "PickleEncoder"


def findings(source: str) -> list[str]:
    """What the rules forbid in ``source``: one line per use, with its line number."""
    tree = ast.parse(source)
    yaml_names = {"yaml"} | {
        a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
        for a in n.names if a.name == "yaml"}
    out = []
    for node in ast.walk(tree):
        for what in (*_import_findings(node), *_use_findings(node, yaml_names)):
            out.append(f"{getattr(node, 'lineno', 0)}: {what}")
    return out


def test_the_rules_see_every_forbidden_construct() -> None:
    # Control: each construct is found, and comments, strings and Redis's EVAL are not.
    bad = textwrap.dedent("""
        import pickle
        import marshal as m
        from shelve import open as shelf
        import yaml as y
        from yaml import load
        import dill.settings
        y.load(text)
        y.unsafe_load(text)
        yaml.full_load(text)
        eval("1")
        exec("x = 1")
        builtins.eval("1")
        __import__("os")
        importlib.import_module("pickle")
        from dramatiq.encoder import PickleEncoder
        dramatiq.set_encoder(dramatiq.PickleEncoder())
    """)
    assert len(findings(bad)) == 15, findings(bad)
    fine = textwrap.dedent('''
        import yaml
        # pickle.loads(x), eval(x), yaml.load(x): comments are not code
        doc = "import pickle; eval(s); yaml.load(s)"
        yaml.safe_load(text)
        client.eval(script, 0)  # Redis EVAL
        self.unpickle = None
        ast.literal_eval("1")
    ''')
    assert findings(fine) == []


@pytest.mark.parametrize("path", python_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_code_runs_from_data(path: Path) -> None:
    assert findings(path.read_text()) == []


def test_the_scan_covers_the_package_and_the_handlers() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in python_files()}
    assert {"chi_redis/config/load.py", "chi_redis/runtime/encoder.py",
            "handlers/app.py"} <= names
    assert len(names) >= 100


# nosec -----------------------------------------------------------------------------------
NOSEC = re.compile(r"#\s*nosec\b(?P<rest>.*)", re.I)


def nosec_problems(source: str) -> list[str]:
    """``# nosec`` comments that name no bandit test id or give no reason on their line
    (the reason is a comment before it: ``# why  # nosec B608``)."""
    problems = []
    comments: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments.setdefault(tok.start[0], []).append(tok.string)
    for line, texts in comments.items():
        text = " ".join(texts)
        m = NOSEC.search(text)
        if m is None:
            continue
        reason = text[: m.start()].strip(" #")
        if not re.fullmatch(r"\s*B\d{3}(\s*,\s*B\d{3})*\s*", m.group("rest")) or len(reason) < 5:
            problems.append(f"{line}: {text}")
    return problems


def test_the_nosec_check_sees_unjustified_ones() -> None:
    assert nosec_problems("x = 1  # nosec\n")
    assert nosec_problems("x = 1  # nosec B608\n")  # no reason
    assert nosec_problems("x = 1  # because  # nosec\n")  # no test id
    assert not nosec_problems("x = 1  # a checked identifier  # nosec B608\n")


@pytest.mark.parametrize("path", python_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_nosec_names_its_finding_and_says_why(path: Path) -> None:
    assert nosec_problems(path.read_text()) == []


def test_scripts_test_runs_the_security_checks() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    security = (ROOT / "scripts" / "security").read_text()
    assert "bash scripts/security" in script
    assert "bandit" in security and "--severity-level medium" in security
    assert "pip-audit" in security
    extra = (ROOT / "pyproject.toml").read_text()
    assert '"bandit>=' in extra and '"pip-audit>=' in extra


# the Dramatiq encoder ------------------------------------------------------------------------
ENCODER_CHECK = """
import json, sys
import dramatiq
before = type(dramatiq.get_encoder()).__name__
if sys.argv[1] == "worker":
    import chi_redis.worker
else:
    from chi_redis import EventBus
    from chi_redis.runtime.broker import StreamsBroker
    StreamsBroker(EventBus.from_url(sys.argv[2], namespace="enc"))
enc = dramatiq.get_encoder()
print(json.dumps({"before": before, "after": f"{type(enc).__module__}.{type(enc).__name__}",
                  "pickle": isinstance(enc, dramatiq.PickleEncoder)}))
"""


@pytest.mark.redis
@pytest.mark.parametrize("how", ["worker", "broker"])
def test_the_process_wide_encoder_is_msgpack_never_pickle(how: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", ENCODER_CHECK, how, server.url], capture_output=True,
            text=True, timeout=120, check=False, cwd=ROOT,
            env=clean_env(CHI_REDIS_URL=server.url, CHI_NAMESPACE="enc"))
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["before"] == "JSONEncoder"  # Dramatiq's default: the check sees a change
    assert got["after"] == "chi_redis.runtime.encoder.MsgpackEncoder"
    assert got["pickle"] is False
