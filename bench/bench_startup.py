"""Start-up cost of chi-redis: ``import chi_redis`` and ``chi-redis --help`` / ``stats``.

  startup.python_ms            ``python -c pass`` (the baseline, same run)
  startup.import_ms            ``python -c "import chi_redis"``, wall clock
  startup.import_self_ms       ``-X importtime``: cumulative µs of ``chi_redis`` itself
  startup.import_modules       modules imported by ``import chi_redis`` beyond bare Python
  startup.heavy                which of redis.asyncio, dramatiq, prometheus_client, yaml,
                               click it pulls in (each should be absent)
  startup.cli_help_ms          ``chi-redis --help``, wall clock
  startup.cli_stats_ms         ``chi-redis stats`` against a Redis URL (if one answers)
  startup.ratio.*              each figure divided by ``startup.python_ms``

Every figure is the median of ``--rounds`` runs.  Run:  python bench/bench_startup.py
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("redis.asyncio", "dramatiq", "prometheus_client", "yaml", "click", "hiredis")


def _wall_ms(argv: list[str], rounds: int, env: dict[str, str]) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env, cwd=ROOT)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def _importtime(py: str, env: dict[str, str]) -> tuple[float, list[str]]:
    out = subprocess.run(
        [py, "-X", "importtime", "-c", "import chi_redis"],
        check=True, capture_output=True, text=True, env=env, cwd=ROOT,
    ).stderr
    cumulative = 0.0
    modules = []
    for line in out.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if not m:
            continue
        modules.append(m.group(4))
        if m.group(4) == "chi_redis":
            cumulative = int(m.group(2)) / 1000
    return cumulative, modules


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--redis-url", default=os.environ.get("CHI_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()
    py = sys.executable
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    cli = shutil.which("chi-redis", path=str(Path(py).parent)) or "chi-redis"
    subprocess.run([py, "-c", "import chi_redis"], check=True, env=env, cwd=ROOT)  # warm .pyc

    base = _wall_ms([py, "-c", "pass"], args.rounds, env)
    imp = _wall_ms([py, "-c", "import chi_redis"], args.rounds, env)
    self_ms = statistics.median(_importtime(py, env)[0] for _ in range(5))
    _, modules = _importtime(py, env)
    bare = set(_importtime_bare(py, env))
    extra = [m for m in modules if m not in bare]
    heavy = [h for h in HEAVY if h in modules]
    helps = _wall_ms([cli, "--help"], args.rounds, env)
    figures = {
        "startup.python_ms": base,
        "startup.import_ms": imp,
        "startup.import_self_ms": self_ms,
        "startup.cli_help_ms": helps,
    }
    try:
        figures["startup.cli_stats_ms"] = _wall_ms(
            [cli, "stats", "--redis-url", args.redis_url, "--namespace", "chi-bench-startup"],
            args.rounds, env,
        )
    except subprocess.CalledProcessError:
        print("# chi-redis stats failed (no Redis?): not measured")
    for name, value in figures.items():
        print(f"{name:34s} {value:9.1f}")
    print(f"{'startup.import_modules':34s} {len(extra):9d}")
    print(f"{'startup.heavy':34s} {' '.join(heavy) or '-'}")
    for name, value in figures.items():
        if name != "startup.python_ms":
            ratio = name.replace("startup.", "startup.ratio.").removesuffix("_ms")
            print(f"{ratio:34s} {value / base:9.2f}x")


def _importtime_bare(py: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [py, "-X", "importtime", "-c", "pass"], check=True, capture_output=True, text=True,
        env=env, cwd=ROOT,
    ).stderr
    return [m.group(1) for m in re.finditer(r"\|\s+\d+ \|\s*(\S+)$", out, re.M)]


if __name__ == "__main__":
    main()
