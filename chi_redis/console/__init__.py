"""The web console (``chi-redis console``, extra ``chi-redis[console]``): the CLI's views
and repairs in a browser.

Pages (:mod:`chi_redis.console.pages`): overview, subscription, dead letters, events,
replay.  They read and act through the same functions as ``chi-redis stats``, ``dlq``,
``events``, ``subscriptions`` and ``replay`` (:mod:`chi_redis.ops`); what guards them is in
:mod:`chi_redis.console.security`; docs/console.md describes it.
"""
