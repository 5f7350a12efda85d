"""ThingsBoard as a destination: records to a ThingsBoard server's MQTT gateway API.

``[uplink.mqtt] format = "thingsboard"``. The gateway is a ThingsBoard *gateway device*
(its access token in ``token_file``, sent as the MQTT username); each sensor is a device
behind it, announced on ``v1/gateway/connect``. Per record (ThingsBoard's gateway MQTT API,
https://thingsboard.io/docs/reference/gateway-mqtt-api/ and
https://thingsboard.io/docs/reference/gateway-api/telemetry/):

=========  ==================================================================================
reading    ``v1/gateway/telemetry``: ``{"<device>": [{"ts": <reading's ts, ms>, "values":
           {"<quantity>": value}}]}``; readings of one device at one ts share a values object
alarm      telemetry of the sensor's device at the alarm's ts: ``{"alarm_<rule>": {state,
           severity, alarm_id, started_at, figures…, seq}}`` (telemetry, not attributes: a
           time series keeps every raise and clear, an attribute only the latest)
event      telemetry of the gateway device itself (``v1/devices/me/telemetry``):
           ``{"event_<name>": {"details": …, "seq": …}}`` at the event's ts
=========  ==================================================================================

**At least once, and no chain verification.** ThingsBoard answers nothing but a PUBACK,
so a PUBACK is the only acknowledgement this path has: a batch is marked sent once every
message of it is PUBACKed. A re-sent reading lands on the same ``(device, key, ts)``
point, which ThingsBoard overwrites (its SQL time series upsert on that key), but its
rule chains see it again. Hashes and seq are not sent (except ``seq`` on alarms and
events) and nothing on the platform checks completeness: for an auditor's record use the
coldgate format and a coldgate receiver (possibly alongside).
"""

from __future__ import annotations

import calendar
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.config import ThingsBoardConfig, UplinkConfig
from agent.exc import SyncTooLarge, SyncTransient
from agent.mqtt.session import puback_reason, refusal, session_from_config
from agent.uplink.base import Answer, Batch

log = logging.getLogger(__name__)

CONNECT_TOPIC = "v1/gateway/connect"
TELEMETRY_TOPIC = "v1/gateway/telemetry"
OWN_TELEMETRY_TOPIC = "v1/devices/me/telemetry"
#: record fields that are the chain's, not the alarm's or event's content
_CHAIN = {"stream", "seq", "type", "ts", "time_quality", "prev_hash", "hash"}


def ts_ms(ts: str) -> int:
    """``2026-11-23T08:15:02.125Z`` as Unix milliseconds (ThingsBoard's ``ts``)."""
    seconds = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1000 + int(ts[20:23])


@dataclass
class Messages:
    """What one batch becomes: devices to announce, their telemetry, the gateway's own."""

    devices: list[str] = field(default_factory=list)
    telemetry: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    own: list[dict[str, Any]] = field(default_factory=list)

    def add(self, device: str, ts: int, values: dict[str, Any]) -> None:
        if device not in self.telemetry:
            self.devices.append(device)
            self.telemetry[device] = []
        points = self.telemetry[device]
        # one values object per (device, ts), unless a key repeats: ThingsBoard keeps one
        # value per (device, key, ts), so a second one gets its own entry (and overwrites)
        if points and points[-1]["ts"] == ts and not values.keys() & points[-1]["values"].keys():
            points[-1]["values"].update(values)
        else:
            points.append({"ts": ts, "values": dict(values)})


def to_thingsboard(batch: Batch, config: ThingsBoardConfig) -> Messages:
    """Map a batch onto ThingsBoard's gateway API (pure: the table in the module docstring)."""
    out = Messages()
    for _, body, _ in batch.records:
        rec = json.loads(body)
        ts = ts_ms(rec["ts"])
        kind = rec["type"]
        if kind == "event":
            content = {"details": rec.get("details", {}), "seq": rec["seq"]}
            out.own.append({"ts": ts, "values": {f"event_{rec['event']}": content}})
            continue
        device = config.device_name.format(gateway_id=batch.gateway_id, sensor_id=rec["sensor_id"])
        if kind == "reading":
            out.add(device, ts, {rec["quantity"]: rec["value"]})
        elif kind == "alarm":
            content = {k: v for k, v in rec.items() if k not in _CHAIN and k not in ("rule", "sensor_id")}
            out.add(device, ts, {f"alarm_{rec['rule']}": {**content, "seq": rec["seq"]}})
    return out


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class ThingsBoardTransport:
    """Publishes batches to ThingsBoard's gateway API; a batch counts as sent once PUBACKed."""

    def __init__(self, config: UplinkConfig, gateway_id: str) -> None:
        assert config.mqtt is not None
        self.config = config
        self.tb = config.mqtt.thingsboard
        self.timeout_s = config.mqtt.answer_timeout_s
        self.gateway_id = gateway_id
        # a batch is several messages (device announcements, telemetry): all of one batch
        # may be in paho's hands at once, never more
        self.session = session_from_config(config, gateway_id, max_queued=1_000)
        self._announced: set[str] = set()
        self._announced_on = -1

    def _payloads(self, msgs: Messages) -> Iterator[tuple[str, bytes]]:
        if self._announced_on != self.session.connects:  # a new connection: announce again
            self._announced, self._announced_on = set(), self.session.connects
        for device in msgs.devices:
            if device not in self._announced:
                announce = {"device": device} | ({"type": self.tb.device_type} if self.tb.device_type else {})
                yield CONNECT_TOPIC, _dumps(announce)
        if msgs.telemetry:
            yield TELEMETRY_TOPIC, _dumps(msgs.telemetry)
        if msgs.own:
            yield OWN_TELEMETRY_TOPIC, _dumps(msgs.own)

    def send(self, batch: Batch) -> Answer:
        msgs = to_thingsboard(batch, self.tb)
        self.session.wait_ready(self.config.connect_timeout_s)
        payloads = list(self._payloads(msgs))
        for topic, payload in payloads:
            if len(payload) > self.tb.max_payload_bytes:
                raise SyncTooLarge(f"batch {batch.first}-{batch.last}: {topic} message of {len(payload)} bytes is "
                                   f"over thingsboard.max_payload_bytes ({self.tb.max_payload_bytes})", status=413)
        session = self.session
        try:
            mids = [session.publish(topic, payload) for topic, payload in payloads]
            done = session.wait(lambda: all(session.puback(m) is not None for m in mids), self.timeout_s)
            codes = [session.puback(m) for m in mids]
            bad = [c for c in codes if c not in (None, 0, 16)]
            if bad:
                raise refusal(puback_reason(bad[0]), f"ThingsBoard refused batch {batch.first}-{batch.last}")
            if not done:
                raise SyncTransient(f"ThingsBoard did not acknowledge batch {batch.first}-{batch.last} "
                                    f"within {self.timeout_s:g} s: kept for a resend")
        finally:
            session.forget()
        self._announced.update(msgs.devices)
        return Answer(stored=len(batch), duplicates=0,
                      extra={"destination": "thingsboard", "acknowledged_by": "PUBACK", "messages": len(payloads)})

    def link(self) -> dict[str, Any]:
        """The broker connection, for ``coldgate status`` (a PUBACK is all ThingsBoard answers)."""
        return self.session.link()

    def close(self) -> None:
        self.session.close()
