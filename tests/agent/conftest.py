"""Fixtures shared by the agent's tests."""

from tests.mosquitto import broker, broker_factory  # noqa: F401 - a real Mosquitto per test
