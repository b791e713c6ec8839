"""Runtime tests (issue #3): StreamsBroker, StreamsConsumer, dead letters, worker processes.

This directory is a package so that worker subprocesses can import the handler modules in it
(``runtime.proc_load`` etc.) with ``PYTHONPATH=<repo>:<repo>/tests``.
"""
