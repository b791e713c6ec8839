"""``chi-redis doctor``: is this Redis server fit to hold events in production?

Checks (docs/design.md §7.6-§7.7):

- server version ≥ 7.0 (stream commands and XINFO fields chi-redis relies on);
- ``appendonly yes`` (without AOF a restart loses everything since the last snapshot);
- ``maxmemory-policy noeviction`` (any other policy may evict streams *and* their groups);
- ``maxmemory`` set (a warning: unbounded growth ends with the OOM killer);
- the default user is not open (a client without credentials is refused);
- TLS (``rediss://``) for any host that is not loopback.

``CONFIG GET`` is often forbidden (ACLs, managed Redis): that is reported, and the values
are read from ``INFO`` instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import redis.exceptions as rex

from ..backend.connection import connect

__all__ = ["Finding", "check_server"]

Level = Literal["ok", "warn", "fail", "info"]
MIN_VERSION = (7, 0)


@dataclass
class Finding:
    """One check's outcome: ``fail`` makes doctor exit non-zero."""

    check: str
    level: Level
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _refusal(exc: Exception) -> str:
    # redis-py drops the NOPERM prefix of the message when it raises NoPermissionError
    return "NOPERM" if isinstance(exc, rex.NoPermissionError) else _s(exc).split(" ", 1)[0]


def _config(client: Any, findings: list[Finding]) -> dict[str, str]:
    """``appendonly`` and ``maxmemory*`` from CONFIG GET, else from INFO."""
    try:
        out: dict[str, str] = {}
        for name in ("appendonly", "maxmemory-policy", "maxmemory"):
            out.update({_s(k): _s(v) for k, v in client.config_get(name).items()})
        return out
    except rex.ResponseError as exc:  # NOPERM, or CONFIG renamed / disabled
        findings.append(Finding(
            "config", "info",
            f"CONFIG GET is not allowed ({_refusal(exc)}): read INFO instead",
        ))
    info = client.info("persistence") | client.info("memory")
    return {
        "appendonly": "yes" if int(info.get("aof_enabled", 0)) else "no",
        "maxmemory-policy": _s(info.get("maxmemory_policy", "unknown")),
        "maxmemory": _s(info.get("maxmemory", "0")),
    }


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    host = parts.hostname or "localhost"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _open_default_user(url: str) -> bool | None:
    """True if a client without credentials may run commands; None if it cannot connect."""
    probe = connect(_without_credentials(url), socket_connect_timeout=3, socket_timeout=3)
    try:
        probe.ping()
        return True
    except (rex.AuthenticationError, rex.NoPermissionError):
        return False
    except rex.ResponseError as exc:
        text = _s(exc)
        if "NOAUTH" in text or "HELLO must be called" in text or "WRONGPASS" in text:
            return False
        return None
    except rex.RedisError:
        return None
    finally:
        probe.close()


def check_server(client: Any, url: str) -> list[Finding]:
    """Run every check against the server ``client`` is connected to (reached by ``url``)."""
    findings: list[Finding] = []
    server = client.info("server")
    version = _s(server.get("redis_version", "0"))
    if _version(version) < MIN_VERSION:
        findings.append(
            Finding("version", "fail", f"Redis {version}: chi-redis needs 7.0 or newer")
        )
    else:
        findings.append(Finding("version", "ok", f"Redis {version}"))
    cfg = _config(client, findings)
    if cfg.get("appendonly") == "yes":
        findings.append(Finding("appendonly", "ok", "appendonly yes"))
    else:
        findings.append(Finding(
            "appendonly", "fail",
            "appendonly is off: a restart loses every event since the last snapshot;"
            " set appendonly yes (appendfsync everysec)",
        ))
    policy = cfg.get("maxmemory-policy", "unknown")
    if policy == "noeviction":
        findings.append(Finding("maxmemory-policy", "ok", "maxmemory-policy noeviction"))
    else:
        findings.append(Finding(
            "maxmemory-policy", "fail",
            f"maxmemory-policy is {policy}: Redis may evict streams and their consumer groups;"
            " set maxmemory-policy noeviction",
        ))
    if cfg.get("maxmemory", "0") in ("0", ""):
        findings.append(Finding(
            "maxmemory", "warn",
            "maxmemory is not set: memory grows until the OS steps in; set it and run"
            " `chi-redis retention run`",
        ))
    else:
        findings.append(Finding("maxmemory", "ok", f"maxmemory {cfg['maxmemory']} bytes"))
    opened = _open_default_user(url)
    if opened:
        findings.append(Finding(
            "auth", "fail",
            "the default user needs no password: anyone who can reach the port can read and"
            " delete every event; set requirepass or an ACL with the default user off",
        ))
    elif opened is None:
        findings.append(Finding("auth", "warn", "could not tell whether the default user is open"))
    else:
        findings.append(Finding("auth", "ok", "clients without credentials are refused"))
    scheme = urlsplit(url).scheme
    if scheme == "rediss":
        findings.append(Finding("tls", "ok", "TLS in use"))
    elif _is_loopback(url):
        findings.append(Finding("tls", "ok", "no TLS, loopback connection"))
    else:
        findings.append(Finding(
            "tls", "fail",
            f"{urlsplit(url).hostname} is not a loopback host and the connection is not"
            " encrypted: use rediss://",
        ))
    return findings
