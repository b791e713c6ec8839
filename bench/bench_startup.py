"""Start-up cost of chi-redis: ``import chi_redis`` and ``chi-redis --help`` / ``stats``.

  startup.python_ms            ``python -c pass`` (the baseline, same run)
  startup.redis_import_ms      ``python -c "import redis"``: what redis-py alone costs
  startup.import_ms            ``python -c "import chi_redis"``, wall clock
  startup.import_self_ms       ``-X importtime``: cumulative µs of ``chi_redis`` itself
  startup.import_modules       modules imported by ``import chi_redis`` beyond bare Python
  startup.heavy                which of redis.asyncio, dramatiq, prometheus_client, yaml,
                               click it pulls in (each should be absent)
  startup.cli_help_ms          ``chi-redis --help``, wall clock
  startup.cli_stats_ms         ``chi-redis stats`` against a Redis URL (if one answers)
  startup.cli_stats_no_otel_ms the same command as if the OpenTelemetry SDK were not
                               installed (only when it is): redis-py 8 imports
                               ``opentelemetry.sdk.metrics`` at import when it can
  startup.ratio.*              each figure divided by ``startup.python_ms``

The commands run interleaved, one of each per round, so a noisy neighbour hits them all
alike; every figure is the best of ``--rounds`` runs (the median beside it).
``--instructions`` runs each command once under ``valgrind --tool=callgrind`` instead and
prints the instructions it executed (``startup.ir.*``, millions, with ratios): a count
that a busy machine does not change, where wall-clock figures swing by 2x.
Run:  python bench/bench_startup.py [--rounds 15] [--instructions]
"""

from __future__ import annotations

import argparse
import importlib.util
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


def _once_ms(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=ROOT)
    return (time.perf_counter() - t0) * 1000


def _interleaved(commands: dict[str, list[str]], rounds: int,
                 env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """name -> (best, median) wall-clock ms, one run of each command per round."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            samples[name].append(_once_ms(argv, env))
    return {name: (min(v), statistics.median(v)) for name, v in samples.items()}


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
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions under valgrind (callgrind) instead of timing")
    args = ap.parse_args()
    py = sys.executable
    # Any value of PYTHONDONTWRITEBYTECODE (even "0") stops .pyc writing, and every run would
    # then compile chi-redis's sources again: measure what an installed package costs.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([py, "-m", "compileall", "-q", str(ROOT / "chi_redis")], check=True, env=env)
    cli = shutil.which("chi-redis", path=str(Path(py).parent)) or "chi-redis"
    subprocess.run([py, "-c", "import chi_redis"], check=True, env=env, cwd=ROOT)  # warm .pyc

    stats_args = ["stats", "--redis-url", args.redis_url, "--namespace", "chi-bench-startup"]
    commands = {
        "startup.python_ms": [py, "-c", "pass"],
        "startup.redis_import_ms": [py, "-c", "import redis"],
        "startup.import_ms": [py, "-c", "import chi_redis"],
        "startup.cli_help_ms": [cli, "--help"],
    }
    try:
        subprocess.run([cli, *stats_args], check=True, capture_output=True, env=env, cwd=ROOT)
        commands["startup.cli_stats_ms"] = [cli, *stats_args]
        if importlib.util.find_spec("opentelemetry") is not None:
            commands["startup.cli_stats_no_otel_ms"] = [py, "-c", _NO_OTEL.format(stats_args)]
    except subprocess.CalledProcessError:
        print("# chi-redis stats failed (no Redis?): not measured")
    if args.instructions:
        _instructions(commands, env)
        return
    timed = _interleaved(commands, args.rounds, env)
    self_ms = statistics.median(_importtime(py, env)[0] for _ in range(5))
    _, modules = _importtime(py, env)
    bare = set(_importtime_bare(py, env))
    extra = [m for m in modules if m not in bare]
    heavy = [h for h in HEAVY if h in modules]
    base = timed["startup.python_ms"][0]
    for name, (best, median) in timed.items():
        print(f"{name:34s} {best:9.1f}  median={median:.1f}")
    print(f"{'startup.import_self_ms':34s} {self_ms:9.1f}")
    print(f"{'startup.import_modules':34s} {len(extra):9d}")
    print(f"{'startup.heavy':34s} {' '.join(heavy) or '-'}")
    for name, (best, _) in timed.items():
        if name != "startup.python_ms":
            ratio = name.replace("startup.", "startup.ratio.").removesuffix("_ms")
            print(f"{ratio:34s} {best / base:9.2f}x")
    if "startup.cli_stats_ms" in timed:
        print(f"{'startup.ratio.cli_stats_vs_help':34s}"
              f" {timed['startup.cli_stats_ms'][0] / timed['startup.cli_help_ms'][0]:9.2f}x")


def _instructions(commands: dict[str, list[str]], env: dict[str, str]) -> None:
    """Each command once under callgrind: instructions executed, millions, and ratios."""
    counts: dict[str, float] = {}
    for name, argv in commands.items():
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
            check=True, capture_output=True, text=True, env={**env, "PYTHONHASHSEED": "0"},
            cwd=ROOT,
        ).stderr
        m = re.search(r"Collected : (\d+)", out)
        if m:
            counts[name] = int(m.group(1)) / 1e6
    base = counts["startup.python_ms"]
    for name, ir in counts.items():
        label = name.replace("startup.", "startup.ir.").removesuffix("_ms")
        print(f"{label:34s} {ir:9.1f}M  {ir / base:6.2f}x")


# The console script's main() with every ``opentelemetry`` import failing, as when the SDK is
# not installed (a measurement device only: nothing in chi-redis does this).
_NO_OTEL = (
    "import sys; sys.modules['opentelemetry'] = None; sys.argv = ['chi-redis', *{0!r}];"
    " from chi_redis.cli.main import main; main()"
)


def _importtime_bare(py: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [py, "-X", "importtime", "-c", "pass"], check=True, capture_output=True, text=True,
        env=env, cwd=ROOT,
    ).stderr
    return [m.group(1) for m in re.finditer(r"\|\s+\d+ \|\s*(\S+)$", out, re.M)]


if __name__ == "__main__":
    main()
