"""One uplink pass over a real store, as the CLI's in-process ``sync --now`` does it."""

from __future__ import annotations

from agent.config import UplinkConfig
from agent.stamp import Stamper
from agent.store import Store
from agent.uplink import transport_for
from agent.uplink.loop import UplinkLoop, UplinkState


def drain(store: Store, config: UplinkConfig, gateway_id: str = "gw") -> UplinkState:
    """Send what ``store`` holds through the configured transport; the state after the pass."""
    loop = UplinkLoop(lambda: store, transport_for(config, gateway_id), config, gateway_id, Stamper(store.stamper.clock),
                      lambda item: store.append([item]))
    try:
        return loop.drain()
    finally:
        if loop.transport is not None:
            loop.transport.close()
