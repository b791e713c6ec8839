"""What every ``chi-redis`` command shares: connection options, errors, output, arguments.

``--redis-url``, ``--namespace``, ``--json`` and ``--config`` are accepted on the group
and on every command (docs/design.md §9.6); a value given on the command wins over the
group's.
The Redis URL comes from ``--redis-url``, then ``CHI_REDIS_URL``, then the config file
(``--config`` / ``CHI_CONFIG``; ``events.bus.redis``), then ``redis://127.0.0.1:6379/0``; the
password may come from ``CHI_REDIS_PASSWORD``.  Defaults of other options (worker threads,
replay batch size and workers) come from the config file too (docs/configuration.md).

Errors a user can fix (:class:`~chi_redis.ChiError`, redis-py errors) become one line on
stderr and exit code 1, with every password scrubbed; click's usage errors exit 2, and so
does every bad value given on the command line (:func:`usage_errors`): a TIME that does
not parse, a reversed range, an invalid topic or glob.  "cannot reach Redis" says how to
point at another server.

The history range (``--topic/--since/--until/--by/--types``) that ``events list`` and
``replay`` share is declared once, by :func:`range_options`; repeated or comma-separated
option values are split by :func:`split_topics` and :func:`split_globs`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click
import msgspec

from ..config import Config, bus_from_config, load_config
from ..errors import ChiError, RedisUnavailableError, ValidationError, scrub
from ..events.names import validate_glob, validate_name
from ..ops.timeparse import TimePoint, parse_time

if TYPE_CHECKING:
    from ..bridges.kafka import KafkaEventBus
    from ..bridges.rabbitmq import RabbitMQEventBus
    from ..publish.bus import EventBus

__all__ = [
    "BY",
    "ChiGroup",
    "Settings",
    "common_options",
    "confirm",
    "emit",
    "emit_lines",
    "iso_ms",
    "json_line",
    "range_options",
    "settings",
    "split_globs",
    "split_topics",
    "stdout_is_tty",
    "time_arg",
    "time_range",
    "usage_errors",
]

F = TypeVar("F", bound=Callable[..., Any])
_JSON = msgspec.json.Encoder()


class Settings:
    """The connection options after every source was consulted.

    A plain class rather than a dataclass: every command builds one, and a dataclass
    compiles its generated methods when this module is imported.
    """

    def __init__(
        self, url: str | None = None, namespace: str | None = None, json: bool = False,
        config_path: str | None = None,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.json = json
        self.config_path = config_path
        self._config: Config | None = None
        self._bus: EventBus | None = None
        self._bridge: RabbitMQEventBus | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, os.environ, notice=_warn)
        return self._config

    @property
    def redis_url(self) -> str:
        return self.url or self.config.redis.effective_url()

    @property
    def ns(self) -> str:
        return self.namespace or self.config.namespace

    @property
    def secrets(self) -> list[str]:
        """Every password any configured URL carries (scrubbed from all output)."""
        urls = [self.url, os.environ.get("CHI_REDIS_URL")]
        out = [p for p in (os.environ.get("CHI_REDIS_PASSWORD"),) if p]
        if self._config is not None:
            urls.append(self._config.redis.url)
            with contextlib.suppress(ChiError):  # the password file's, read when connecting
                out += [p for p in (self._config.redis.secret(),) if p]
        for u in urls:
            try:
                p = urlsplit(u).password if u else None
            except ValueError:
                p = None
            if p:
                out.append(p)
        return out

    def bus(self) -> EventBus:
        """The bus for this invocation (created once).  On a bridge bus (``bus.type``
        rabbitmq or kafka, no ``--redis-url``) the command needs the Redis event store:
        a :class:`NotSupportedError` names the command, the bus and what to use."""
        kind = self.config.bus.type
        if not self.url and kind in ("rabbitmq", "kafka"):
            from ..bridges import NotSupportedError

            ctx = click.get_current_context(silent=True)
            what = f"`{ctx.command_path}`" if ctx is not None else "this command"
            raise NotSupportedError(
                f"{what} is not supported on bus.type {kind!r}: it reads the Redis event"
                " store (events, replay, subscriptions, retention, health, doctor, the"
                " console); give --redis-url (or bus.type: redis) to run it on the Redis bus"
                " that stores the events (docs/buses.md, capabilities)")
        if self._bus is None:
            # bus_from_config imports redis-py (~80 ms) only now: --help never pays for it.
            # A --redis-url flag means a Redis server, whatever bus.type the file names.
            cfg = self.config
            if self.url and cfg.bus.type != "redis":
                cfg = msgspec.structs.replace(
                    cfg, bus=msgspec.structs.replace(cfg.bus, type="redis"))
            self._bus = bus_from_config(cfg, url=self.url, namespace=self.namespace)
        return self._bus

    def bridge(self) -> RabbitMQEventBus | None:
        """The bridge bus (``bus.type: rabbitmq`` without a ``--redis-url`` flag), else None.

        Commands that work on a bridge (``publish``, ``dlq list``, ``dlq redrive``) ask this
        first; the others go to :meth:`bus`, which says that they need Redis."""
        if self.url or self.config.bus.type != "rabbitmq":
            return None
        if self._bridge is None:
            from ..bridges.rabbitmq import RabbitMQEventBus

            self._bridge = RabbitMQEventBus.from_config(self.config, namespace=self.namespace)
        return self._bridge

    def kafka(self) -> KafkaEventBus | None:
        """The Kafka bus (``bus.type: kafka`` without a ``--redis-url`` flag), else None."""
        if self.url or self.config.bus.type != "kafka":
            return None
        from ..bridges.kafka import KafkaEventBus

        return KafkaEventBus.from_config(self.config, namespace=self.namespace)

    def publisher(self) -> Any:
        """What ``publish`` writes to: the Kafka bus when ``bus.type`` is ``kafka`` (and no
        --redis-url was given), else :meth:`bus`."""
        if self.config.bus.type == "kafka" and not self.url:
            from ..bridges.kafka import KafkaEventBus

            return KafkaEventBus.from_config(self.config, namespace=self.namespace)
        return self.bus()


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def settings(ctx: click.Context | None = None) -> Settings:
    """The settings of the current invocation."""
    ctx = ctx or click.get_current_context()
    obj = ctx.find_root().ensure_object(Settings)
    assert isinstance(obj, Settings)
    return obj


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    s = settings(ctx)
    if value is None or value is False:
        return value
    if param.name == "redis_url":
        s.url = value
    elif param.name == "namespace":
        with usage_errors():  # "" (an unset shell variable) must not mean the default
            s.namespace = validate_name(value, "namespace")
    elif param.name == "json_output":
        s.json = True
    elif param.name == "config_path":
        s.config_path = value
    return value


def common_options(fn: F) -> F:
    """Add the shared connection and output options to a command or group."""
    options = [
        click.option("--redis-url", "redis_url", metavar="URL", expose_value=False,
                     callback=_store, is_eager=True,
                     help="Redis URL (else $CHI_REDIS_URL, the config file, redis://127.0.0.1:6379/0)."),
        click.option("--namespace", "namespace", metavar="NS", expose_value=False,
                     callback=_store, is_eager=True, help="Key namespace (default chi)."),
        click.option("--json", "json_output", is_flag=True, expose_value=False,
                     callback=_store, is_eager=True, help="Machine-readable output."),
        click.option("--config", "config_path", metavar="FILE", expose_value=False,
                     callback=_store, is_eager=True, help="YAML config file (else $CHI_CONFIG)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


#: Appended to "cannot reach Redis": the first thing a new user needs to know then.
UNREACHABLE_HINT = "use --redis-url URL or CHI_REDIS_URL to point at another server"


def _one_line(text: str, secrets: list[str]) -> str:
    return " ".join(scrub(text, *secrets).split())


def _fixable(exc: ChiError, secrets: list[str]) -> click.ClickException:
    text = str(exc)
    if isinstance(exc, RedisUnavailableError):
        text = f"{text.rstrip('.')}; {UNREACHABLE_HINT}"
    out = click.ClickException(_one_line(text, secrets))
    # The error's own exit code (130: a replay stopped by Ctrl-C); a class variable in click.
    out.exit_code = getattr(exc, "exit_code", 1)  # type: ignore[misc]
    return out


class ChiGroup(click.Group):
    """A click group that turns user-fixable errors into one clean line and exit code 1
    (or the error's own ``exit_code``)."""

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except ChiError as exc:
            raise _fixable(exc, settings(ctx).secrets) from None
        except Exception as exc:
            import redis.exceptions as rex  # already loaded by any command that used Redis

            from ..backend.connection import map_redis_error

            if not isinstance(exc, rex.RedisError):
                raise
            s = settings(ctx)
            raise _fixable(map_redis_error(exc, s.url or ""), s.secrets) from None


def emit(obj: Any, text: Iterable[str] | str | None = None) -> None:
    """Print one result: ``obj`` as one JSON object with --json, else ``text``."""
    if settings().json or text is None:
        click.echo(_JSON.encode(obj).decode())
        return
    for line in [text] if isinstance(text, str) else text:
        click.echo(line)


def emit_lines(
    objs: Iterable[Any], render: Callable[[Any], str] | None = None, header: str | None = None,
) -> int:
    """Print a list: one JSON object per line with --json (or without ``render``).

    In text mode ``header`` (the column names) comes before the first row; an empty list
    prints nothing.  Returns how many rows were printed.
    """
    n = 0
    as_json = settings().json or render is None
    for o in objs:
        if not n and header is not None and not as_json:
            click.echo(header)
        click.echo(_JSON.encode(o).decode() if as_json else render(o))  # type: ignore[misc]
        n += 1
    return n


def json_line(obj: Any) -> bytes:
    """``obj`` as compact JSON bytes."""
    return _JSON.encode(obj)


def iso_ms(ms: int | None) -> str:
    """A time in ms since the epoch as ISO 8601 UTC to the second (``-`` when unset)."""
    if not ms:
        return "-"
    when = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
    return when.replace("+00:00", "Z")


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` on stderr unless ``--yes`` was given; "no" aborts (exit 1)."""
    if not yes:
        click.confirm(question, abort=True, err=True)


def stdout_is_tty() -> bool:
    """Whether stdout is a terminal (progress bars and screen clearing only then)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


# arguments ----------------------------------------------------------------------------------
#: ``--by``: range over append time (stream ids) or event time (the time index).
BY = click.Choice(["append", "event-time"])


def range_options(*, topic_help: str, until_help: str) -> Callable[[F], F]:
    """Add the history range options ``--topic --since --until --by --types`` to a command.

    The command receives ``topics``, ``since``, ``until``, ``by`` and ``types`` as given;
    parse them with :func:`split_topics`, :func:`time_arg` and :func:`split_globs`.
    """
    options = [
        click.option("--topic", "topics", multiple=True, help=topic_help),
        click.option("--since", metavar="TIME", help="From (inclusive): TIME or stream id."),
        click.option("--until", metavar="TIME", help=until_help),
        click.option("--by", type=BY, default="append", show_default=True,
                     help="Range over append time (stream ids) or event time (the time index)."),
        click.option("--types", multiple=True, metavar="GLOB",
                     help="Only these types (repeatable)."),
    ]

    def decorate(fn: F) -> F:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


@contextmanager
def usage_errors() -> Iterator[None]:
    """Turn a :class:`ValidationError` of a command-line value into a usage error (exit 2).

    Only around parsing what the user typed: the same error raised by data (a config file,
    an entry in Redis) stays an error to fix (exit 1).
    """
    try:
        yield
    except ValidationError as exc:
        raise click.UsageError(_one_line(str(exc), []),
                               ctx=click.get_current_context(silent=True)) from None


def split_topics(values: Iterable[str]) -> list[str]:
    """``--topic a,b --topic c`` → ``["a", "b", "c"]`` (validated, sorted, no duplicates).

    A value that names no topic at all (``--topic ""``, from an unset shell variable) is an
    error, not "every topic"."""
    with usage_errors():
        for v in values:
            if not v.strip(","):
                validate_name(v, "topic")
        return sorted({validate_name(t, "topic") for v in values for t in v.split(",") if t})


def split_globs(values: Iterable[str]) -> list[str]:
    """``--types a.*,b.c --types d`` → ``["a.*", "b.c", "d"]`` (validated; a value naming
    no glob at all is an error, as in :func:`split_topics`)."""
    out = [g.strip() for v in values for g in v.split(",") if g.strip()]
    with usage_errors():
        for v in values:
            if not v.replace(",", "").strip():
                validate_glob(v)
        for g in out:
            validate_glob(g)
    return out


def time_arg(text: str | None, option: str) -> TimePoint | None:
    """A TIME option's value parsed (None when not given); errors name ``option`` (exit 2)."""
    with usage_errors():
        return None if text is None else parse_time(text, field=option)


def time_range(
    since: str | None, until: str | None, by: str = "append",
) -> tuple[TimePoint | None, TimePoint | None]:
    """``--since`` and ``--until`` parsed; a reversed range is a usage error.

    A range whose start lies after its end can only hold nothing, so it is certainly a
    mistake (the two values swapped), not a question whose answer is "no events".
    """
    lo, hi = time_arg(since, "--since"), time_arg(until, "--until")
    if lo is not None and hi is not None:
        by_id = by == "append"
        if lo.lower_id() > hi.upper_id() if by_id else lo.lower_us() > hi.upper_us():
            raise click.UsageError(
                f"--since {since} is after --until {until}: the range is empty (swap them?)",
                ctx=click.get_current_context(silent=True),
            )
    return lo, hi
