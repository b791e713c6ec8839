"""Example application handlers (the seed's examples), kept as real, tested code.

``handlers.app.register(bus, mailer)`` registers every subscription on a bus;
``handlers.worker`` is what ``dramatiq chi_redis.worker handlers.worker`` imports.
"""
