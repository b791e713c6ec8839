"""``chi-redis worker``: run Dramatiq workers with this invocation's connection settings."""

from __future__ import annotations

import os
import sys

import click

from ..errors import ConfigError
from .options import common_options, settings

__all__ = ["execute", "worker"]


@click.command()
@common_options
@click.argument("modules", nargs=-1, required=True)
@click.option("--processes", "-p", type=click.IntRange(min=1), help="Worker processes.")
@click.option("--threads", "-t", type=click.IntRange(min=1),
              help="Threads per process (default: config bus.worker_count, else Dramatiq's 8).")
def worker(modules: tuple[str, ...], processes: int | None, threads: int | None) -> None:
    """Run Dramatiq workers for the subscriptions MODULES register."""
    s = settings()
    if s.config.bus.type == "rabbitmq" and not s.url:
        _bridge_worker(modules, processes, threads)
        return
    env = dict(os.environ)
    env["CHI_REDIS_URL"] = s.redis_url
    env["CHI_NAMESPACE"] = s.ns
    if s.config_path:
        env["CHI_CONFIG"] = s.config_path
    if s.config.bus.type == "kafka" and not s.url:  # no Dramatiq: chi_redis.bridges.kafka
        if processes and processes > 1:
            raise ConfigError("the Kafka worker runs one process: start several"
                              " `chi-redis worker` commands instead of --processes")
        argv = [sys.executable, "-m", "chi_redis.bridges.kafka_serve", *modules]
        execute([*argv, "--threads", str(threads or s.config.bus.worker_count or 1)], env)
        return
    argv = [sys.executable, "-m", "dramatiq", "chi_redis.worker", *modules]
    if processes:
        argv += ["--processes", str(processes)]
    threads = threads or s.config.bus.worker_count
    if threads:
        argv += ["--threads", str(threads)]
    execute(argv, env)


def _bridge_worker(modules: tuple[str, ...], processes: int | None, threads: int | None) -> None:
    """``bus.type: rabbitmq``: one process of ``chi_redis.bridges.run`` (no Dramatiq)."""
    from ..bridges import NotSupportedError

    if processes and processes > 1:
        raise NotSupportedError("--processes is not supported on bus.type 'rabbitmq': start"
                                " one `chi-redis worker` per process (they share the queues)")
    s = settings()
    env = dict(os.environ)
    env["CHI_NAMESPACE"] = s.ns
    if s.config_path:
        env["CHI_CONFIG"] = s.config_path
    argv = [sys.executable, "-m", "chi_redis.bridges.run", *modules,
            "--threads", str(threads or s.config.bus.worker_count or 4)]
    execute(argv, env)


def execute(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with ``argv`` (tests replace this function)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)
