"""Imported by ``dramatiq chi_redis.worker handlers.worker``: registers the example app."""

from __future__ import annotations

from chi_redis.worker import bus

from .app import AuditLog, app_keys, register
from .mail import FakeMailer

mail_key, audit_key = app_keys(bus.namespace)
mailer = FakeMailer(bus.client, mail_key)
audit = AuditLog(bus.client, audit_key)
register(bus, mailer, audit)
