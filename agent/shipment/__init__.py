"""Shipments: lifecycle, legs, custody, the stability budget across the supply chain.

:class:`ShipmentBook` is the pure state machine the daemon feeds (see its module);
:class:`ShipmentSpec` the schema of a shipment (``[[shipments]]``, ``shipment start``);
:func:`stamp` turns the book's records into store items; :func:`describe` gathers what
``shipment_started`` says of each sensor from the config. Design: ``docs/shipments.md``.
"""

from agent.shipment.book import ShipmentBook, stamp
from agent.shipment.config import LegSpec, ShipmentsConfig, ShipmentSpec
from agent.shipment.info import describe
from agent.shipment.standards import en12830_check, en12830_max_interval

__all__ = ["LegSpec", "ShipmentBook", "ShipmentSpec", "ShipmentsConfig", "describe", "en12830_check",
           "en12830_max_interval", "stamp"]
