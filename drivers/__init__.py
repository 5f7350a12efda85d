"""Device drivers: bytes from serial lines and radio advertisements turned into readings.

This package never imports :mod:`agent`. The agent knows drivers only through
:mod:`drivers.base` (the :class:`~drivers.base.Driver` seam and the
:class:`~drivers.base.Reading` value) and :mod:`drivers.registry` (names to classes,
imported lazily, so a serial-only gateway never imports bleak).
"""
