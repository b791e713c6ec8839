"""Redis connections: a deliberate retry policy and errors mapped at the boundary.

redis-py retries every command ten times on timeouts by default; a retried XADD after a
lost reply duplicates the event.  chi-redis turns that off (``Retry(NoBackoff(), 0)``) and
retries itself under :class:`RetryPolicy`, only where a retry is safe: the publish script
skips an event id that is already written, so re-sending it cannot duplicate it.
Failed authentication and a failed TLS handshake are never retried (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import (
    ChiError,
    RedisAuthError,
    RedisError,
    RedisFullError,
    RedisTLSError,
    RedisUnavailableError,
    redact_url,
    scrub,
    url_has_password,
)
from . import DEFAULT_URL

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DEFAULT_URL", "RetryPolicy", "connect", "connect_async", "map_redis_error"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
C = TypeVar("C")



class RetryPolicy(msgspec.Struct, frozen=True):
    """How often and how patiently to retry after a connection error.

    ``attempts`` counts every try (1 = no retry); waits grow exponentially from
    ``base_ms`` to ``max_ms`` with full jitter.
    """

    attempts: int = 3
    base_ms: int = 50
    max_ms: int = 1000

    def delays(self) -> list[float]:
        """The waits (seconds) before each retry."""
        return [
            random.uniform(0, min(self.max_ms, self.base_ms * 2**i)) / 1000
            for i in range(max(0, self.attempts - 1))
        ]


_TRANSIENT = (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError)
_CERT_DETAIL = re.compile(r"certificate verify failed: (.*?)\.? \(_ssl")


def _tls_failure(text: str) -> bool:
    """Whether a connection error is a failed TLS handshake (redis-py keeps only its text)."""
    return "[SSL" in text or "certificate verify failed" in text


def _tls_error(text: str, where: str) -> RedisTLSError:
    m = _CERT_DETAIL.search(text)
    detail = m.group(1) if m else " ".join(text.split())
    if "mismatch" in detail or "not valid for" in detail:
        return RedisTLSError(f"TLS: the server's certificate{where} is not valid for the host"
                             f" name connected to ({detail}); connect by a name it was issued for")
    if m:
        return RedisTLSError(f"TLS: cannot verify the server's certificate{where} ({detail});"
                             " give the CA that signed it: bus.redis.tls_ca_file,"
                             " CHI_REDIS_TLS_CA_FILE or ?ssl_ca_certs=PATH in the URL")
    return RedisTLSError(f"TLS handshake failed{where}: {detail}")


def _plaintext_hint(text: str, url: str) -> str:
    """A plain ``redis://`` connection the server drops at once may have reached a TLS port."""
    if url.startswith("redis://") and ("reset by peer" in text or "closed by server" in text):
        return "; if the server speaks TLS only, use rediss://"
    return ""


def map_redis_error(exc: BaseException, url: str = "", password: str | None = None) -> ChiError:
    """Translate a redis-py exception into a :class:`ChiError` without any secret in it;
    a :class:`RedisError` says whether the command may have run (``outcome``)."""
    err = _map_error(exc, url, password)
    if isinstance(err, RedisError):
        err.outcome = command_outcome(exc)
    return err


def command_outcome(exc: BaseException) -> str:
    """``"not_written"`` when the failed command certainly changed nothing, else
    ``"unknown"``: a timeout or a reset after the request was sent may follow its run."""
    if isinstance(exc, (rex.AuthenticationError, rex.NoPermissionError, rex.BusyLoadingError,
                        rex.OutOfMemoryError)):
        return "not_written"
    text = str(exc)
    if isinstance(exc, rex.ResponseError) and text.startswith(("OOM", "NOAUTH", "WRONGPASS")):
        return "not_written"
    if isinstance(exc, _TRANSIENT) and "connecting to" in text.lower():
        return "not_written"  # no connection was made: nothing was sent
    return "unknown"


def _map_error(exc: BaseException, url: str, password: str | None) -> ChiError:
    where = f" at {redact_url(url)}" if url else ""
    text = scrub(str(exc), password)
    if isinstance(exc, rex.AuthenticationError) or (
        isinstance(exc, rex.ResponseError) and text.startswith(("WRONGPASS", "NOAUTH"))
    ):
        if "NOAUTH" in text or "HELLO must be called" in text or "Authentication required" in text:
            return RedisAuthError(f"no credentials supplied{where}: the server requires a password")
        return RedisAuthError(f"authentication failed{where}: {text} (check the user name and"
                              " password: CHI_REDIS_PASSWORD, CHI_REDIS_PASSWORD_FILE)")
    if isinstance(exc, rex.NoPermissionError):
        return RedisAuthError(f"permission denied{where}: {text}")
    if isinstance(exc, rex.OutOfMemoryError) or (
        isinstance(exc, rex.ResponseError) and text.startswith("OOM")
    ):
        return RedisFullError(
            f"Redis refused the write{where}: maxmemory reached ({text}); trim with"
            " `chi-redis retention apply` or raise maxmemory"
        )
    if isinstance(exc, rex.ConnectionError) and _tls_failure(text):
        return _tls_error(text, where)
    if isinstance(exc, _TRANSIENT):
        hint = _plaintext_hint(text, url)
        return RedisUnavailableError(f"cannot reach Redis{where}: {text}{hint}")
    return RedisError(f"Redis error{where}: {text}")


def _driver_info(options: dict[str, Any]) -> dict[str, Any]:
    """redis-py's CLIENT SETINFO identity (``redis-py``, its version) given explicitly.

    Left to itself, redis-py looks its own version up in the installed packages' metadata
    when it opens the first connection (a scan of site-packages: ~5 ms of every CLI run);
    ``redis.__version__`` is the same string.  Nothing changes when the caller names one.
    """
    if options.keys() & {"driver_info", "lib_name", "lib_version"}:
        return {}
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # pragma: no cover - redis-py before DriverInfo: it looks it up
        return {}
    return {"driver_info": DriverInfo(name="redis-py", lib_version=redis.__version__)}


def _client_options(options: dict[str, Any], retry: Any = None) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "socket_connect_timeout": 5.0,
        # Must exceed the longest XREADGROUP BLOCK we issue (docs/design.md §8).
        "socket_timeout": 10.0,
        "retry": Retry(NoBackoff(), 0) if retry is None else retry,
        "health_check_interval": 30,
        **_driver_info(options),
    }
    opts.update(options)
    return opts


def _invalid_url(url: str, exc: Exception) -> RedisUnavailableError:
    # A parse error may quote a piece of a password with unescaped characters: show it
    # only when the URL has no password at all.
    detail = (
        "cannot parse it (percent-encode special characters in the password)"
        if url_has_password(url)
        else str(exc)
    )
    return RedisUnavailableError(f"invalid Redis URL {redact_url(url)!r}: {detail}")


def _warn_unverified(client: C, url: str) -> C:
    """Log a WARNING when a TLS client does not verify the server's certificate or name
    (``tls_verify: false``, ``?ssl_cert_reqs=none``, ``?ssl_check_hostname=false``)."""
    pool: Any = client.connection_pool  # type: ignore[attr-defined]
    if "SSL" not in pool.connection_class.__name__:
        return client
    kw = pool.connection_kwargs
    if "ssl_cert_reqs" in kw and kw["ssl_cert_reqs"] in (None, "none", 0):
        logger.warning("TLS certificate verification is OFF for %s: anyone on the path can"
                       " pose as the server", redact_url(url))
    elif kw.get("ssl_check_hostname") is False:
        logger.warning("TLS host name verification is OFF for %s", redact_url(url))
    return client


def connect(url: str = DEFAULT_URL, *, detect_cluster: bool = True,
            **options: Any) -> redis.Redis:
    """A redis-py client for ``url`` with chi-redis's connection defaults.

    When the server at ``url`` runs in cluster mode (``INFO cluster``: ``cluster_enabled:1``)
    the client is a ``RedisCluster`` that discovers the other nodes and follows MOVED/ASK:
    any node's URL reaches the whole cluster (docs/design.md §3.4).  That costs one round
    trip now; ``detect_cluster=False`` leaves the client plain and unconnected (a module
    that builds its bus at import: ``EventBus.adopt_cluster`` detects later).
    """
    opts = _client_options(options)
    try:
        client = redis.Redis.from_url(url, **opts)
    except ValueError as exc:
        raise _invalid_url(url, exc) from None
    if detect_cluster and is_cluster_server(client):
        client.close()
        from .cluster import cluster_client

        return cluster_client(url, opts)  # type: ignore[return-value]
    return _warn_unverified(client, url)


def is_cluster_server(client: redis.Redis) -> bool:
    """Whether ``client``'s server runs in cluster mode; False when it cannot be asked (the
    error then surfaces on the first real command, as it would without this probe)."""
    try:
        return bool(client.info("cluster").get("cluster_enabled") == 1)
    except (rex.RedisError, OSError):
        return False


async def ais_cluster_server(client: redis.asyncio.Redis) -> bool | None:
    """Whether the server of a ``redis.asyncio`` client runs in cluster mode; None when it
    cannot be asked now (ask again later: the error surfaces on the first real command)."""
    try:
        return bool((await client.info("cluster")).get("cluster_enabled") == 1)
    except (rex.RedisError, OSError):
        return None


def connect_async(url: str = DEFAULT_URL, **options: Any) -> redis.asyncio.Redis:
    """A ``redis.asyncio`` client for ``url`` with chi-redis's connection defaults.

    It makes no connection, so it cannot ask whether the server runs in cluster mode:
    :class:`~chi_redis.AsyncEventBus` asks at its first publish and switches to a
    ``redis.asyncio.cluster.RedisCluster`` then (docs/design.md §3.4).
    """
    import redis.asyncio  # here, not at the top: only asyncio programs pay for it
    from redis.asyncio.retry import Retry as AsyncRetry

    # redis-py 8.2 warns when an asyncio client is given the synchronous Retry class.
    try:
        opts = _client_options(options, retry=AsyncRetry(NoBackoff(), 0))
        client = redis.asyncio.Redis.from_url(url, **opts)
    except ValueError as exc:
        raise _invalid_url(url, exc) from None
    return _warn_unverified(client, url)


def client_url(client: Any) -> tuple[str, str | None]:
    """A display URL (no password) and the password of a redis-py client, for error text."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a RedisCluster: the node it was given
        node = client.get_default_node()
        kw = getattr(node, "connection_kwargs", None)  # an asyncio cluster's node
        if kw is None:
            kw = node.redis_connection.connection_pool.connection_kwargs
        return f"redis://{node.host}:{node.port}/0", kw.get("password")
    kw = pool.connection_kwargs
    host = kw.get("host", kw.get("path", "?"))
    port = kw.get("port")
    ssl = kw.get("ssl") or "ssl" in str(client.connection_pool.connection_class).lower()
    scheme = "rediss" if ssl else "redis"
    url = f"{scheme}://{host}" + (f":{port}" if port else "") + f"/{kw.get('db', 0)}"
    return url, kw.get("password")


def call_with_retry(
    fn: Callable[[], T], policy: RetryPolicy, url: str = "", password: str | None = None
) -> T:
    """Run ``fn``, retrying transient connection errors under ``policy``; map errors."""
    delays: list[float] | None = None  # drawn on the first failure: the hot path pays nothing
    attempt = 0
    while True:
        try:
            return fn()
        except rex.AuthenticationError as exc:
            raise map_redis_error(exc, url, password) from None
        except _TRANSIENT as exc:
            if _tls_failure(str(exc)):  # the same every time: no retry
                raise map_redis_error(exc, url, password) from None
            if delays is None:
                delays = policy.delays()
            if attempt >= len(delays):
                raise map_redis_error(exc, url, password) from None
            logger.warning(
                "redis connection error (attempt %d): %s", attempt + 1, type(exc).__name__
            )
            time.sleep(delays[attempt])
            attempt += 1
        except rex.RedisError as exc:
            raise map_redis_error(exc, url, password) from None


async def acall_with_retry(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy, url: str = "", password: str | None = None
) -> T:
    """The async twin of :func:`call_with_retry`."""
    delays: list[float] | None = None
    attempt = 0
    while True:
        try:
            return await fn()
        except rex.AuthenticationError as exc:
            raise map_redis_error(exc, url, password) from None
        except _TRANSIENT as exc:
            if _tls_failure(str(exc)):  # the same every time: no retry
                raise map_redis_error(exc, url, password) from None
            if delays is None:
                delays = policy.delays()
            if attempt >= len(delays):
                raise map_redis_error(exc, url, password) from None
            logger.warning(
                "redis connection error (attempt %d): %s", attempt + 1, type(exc).__name__
            )
            await asyncio.sleep(delays[attempt])
            attempt += 1
        except rex.RedisError as exc:
            raise map_redis_error(exc, url, password) from None
