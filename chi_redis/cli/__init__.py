"""The ``chi-redis`` command: one module per command group."""
