"""``HookFilter``: Dramatiq's middleware signals, calling only the hooks that do something.

Dramatiq's ``Broker.emit_before``/``emit_after`` call ``getattr(middleware, hook)`` on every
middleware for every signal, most of them the base class's no-op: per message that is four
signals (``process_message`` and ``ack``, before and after) over the whole middleware list.
This mixin keeps, per signal, the middleware whose hook is not :class:`dramatiq.Middleware`'s
own (overridden by its class, or set on the instance) and calls just those, with Dramatiq's
semantics unchanged: the same order (``after`` hooks in reverse), a
:class:`~dramatiq.middleware.MiddlewareError` (``SkipMessage``) raised by a ``before`` hook
propagates, any other exception is logged critically and the next hook still runs.

The lists are rebuilt whenever ``broker.middleware`` differs from the list they were made
from (``add_middleware``, or the list changed or replaced directly), so a middleware added
later is honoured.  The hook itself is looked up when it is called, so patching an
overridden hook on an instance takes effect as it would in Dramatiq.

:func:`lighter` swaps Dramatiq's default :class:`~dramatiq.middleware.Pipelines` for
:class:`LightPipelines`, the same middleware whose hook returns at once for a message that
is not part of a pipeline (the original imports ``Message`` and looks the actor up first).
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import MiddlewareError, Pipelines

__all__ = ["HookFilter", "LightPipelines", "lighter", "overrides"]


def overrides(middleware: Any, hook: str) -> bool:
    """Whether calling ``middleware.<hook>`` can do anything (not the base class's no-op)."""
    if hook in getattr(middleware, "__dict__", ()):
        return True
    base = getattr(dramatiq.Middleware, hook, None)
    if base is None:  # not a Dramatiq signal: leave it to getattr, as Dramatiq does
        return True
    return getattr(type(middleware), hook, None) is not base


class HookFilter(dramatiq.Broker):
    """A Dramatiq broker whose signals skip the middleware that do not implement them."""

    #: (the middleware list the lists were made from, {hook: middleware implementing it}):
    #: one attribute, so a thread never pairs one list's hooks with another list.
    _hook_cache: tuple[list[Any], dict[str, tuple[Any, ...]]] | None = None

    def _listeners(self, hook: str) -> tuple[Any, ...]:
        """The middleware implementing ``hook``, in the order Dramatiq calls them."""
        cache = self._hook_cache
        if cache is None or cache[0] != self.middleware:  # identity per item, in C
            cache = self._hook_cache = (list(self.middleware), {})
        found = cache[1].get(hook)
        if found is None:
            found = tuple(m for m in cache[0] if overrides(m, hook))
            if hook.startswith("after_"):
                found = found[::-1]
            cache[1][hook] = found
        return found

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "before_" + signal
        for middleware in self._listeners(hook):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "after_" + signal
        for middleware in self._listeners(hook):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )


class LightPipelines(Pipelines):
    """:class:`~dramatiq.middleware.Pipelines`, returning at once when there is no next
    message (no ``pipe_target`` option: it does nothing then either)."""

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if message.options.get("pipe_target") is None:
            return
        super().after_process_message(  # type: ignore[no-untyped-call]
            broker, message, result=result, exception=exception
        )


def lighter(middleware: list[Any]) -> list[Any]:
    """``middleware`` with Dramatiq's own Pipelines (that class exactly, not a subclass)
    replaced by :class:`LightPipelines`."""
    return [LightPipelines() if type(m) is Pipelines else m for m in middleware]
