"""coldgate agent: store, rules, sync, daemon and CLI. Drivers live in :mod:`drivers`."""

__version__ = "0.1.0"
