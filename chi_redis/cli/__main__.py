"""``python -m chi_redis.cli``: the same as the ``chi-redis`` command."""

from .main import main

main()
