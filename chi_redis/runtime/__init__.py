"""Subscriptions as consumer groups feeding Dramatiq: broker, consumer, runner, dead letters."""
