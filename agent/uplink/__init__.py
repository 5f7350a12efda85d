"""The uplink: a transport seam (:mod:`agent.uplink.base`), its transports, and the loop.

:func:`transport_for` chooses the transport a config names; the loop
(:mod:`agent.uplink.loop`) knows only the seam.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.config import UplinkConfig
from agent.uplink.base import Answer, Batch, Transport


def transport_for(config: UplinkConfig, gateway_id: str) -> Callable[[], Transport] | None:
    """A factory of the configured transport, or None when no uplink is configured.

    ``transport = "mqtt"`` (paho-mqtt, the ``mqtt`` extra, imported only then) publishes
    to a broker and waits for the central consumer's answer (docs/mqtt.md); otherwise
    ``uplink.url`` names the HTTP endpoint.
    """
    if getattr(config, "transport", "http") == "mqtt":

        def mqtt() -> Transport:
            from agent.uplink.mqtt import MqttTransport

            transport: Transport = MqttTransport.from_config(config, gateway_id)
            return transport

        return mqtt
    if config.url is None:
        return None

    def http() -> Transport:
        from agent.uplink.http import HttpTransport

        return HttpTransport(config)

    return http


__all__ = ["Answer", "Batch", "Transport", "transport_for"]
