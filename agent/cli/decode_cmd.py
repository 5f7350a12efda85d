"""``coldgate decode FORMAT …``: decode one captured sentence or payload into readings.

Each format family registers its own sub-command from its CLI module
(``register_decode(subparsers)``), so the decoders stay next to their drivers.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

DECODE_MODULES: list[str] = [
    "agent.cli.serial_cmd",
    "agent.cli.ble_cmd",
]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "decode", help="decode one captured sentence or payload into the readings a driver would record"
    )
    dsub = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name in DECODE_MODULES:
        importlib.import_module(name).register_decode(dsub)
