"""The MQTT uplink: batches to an existing broker, acknowledged only by the consumer's answer.

A PUBACK says the *broker* took a message, nothing more. So :class:`MqttTransport`
publishes a batch (QoS 1, :mod:`agent.mqtt.wire`'s envelope) to
``<prefix>/<gateway_id>/batches`` and then waits for the central consumer's answer on
``<prefix>/<gateway_id>/acks``, which it publishes only after its commit. Only that answer
becomes an :class:`~agent.uplink.base.Answer`; its refusals raise what an HTTP status
would. No answer within ``answer_timeout_s`` is a :class:`~agent.exc.SyncTransient`: the
loop resends the same batch later and the consumer answers ``duplicates``.

The backlog stays on the gateway: one batch is in paho's hands at a time (its queue is
bounded to one message, nothing is published while disconnected, and a batch that timed
out is taken back out of paho so it is not replayed on a later reconnect); the broker
keeps a batch no consumer took for ``message_expiry_s`` at most. The connection itself
is :class:`~agent.mqtt.session.BrokerSession`'s job.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from agent.config import UplinkConfig
from agent.exc import ConfigError, ConfigProblem, SyncTooLarge, SyncTransient
from agent.mqtt import wire
from agent.mqtt.session import PacketTypes, Properties, puback_reason, refusal, require_paho, session_from_config
from agent.uplink.base import Answer, Batch

if TYPE_CHECKING:
    from agent.config import MqttConfig

log = logging.getLogger(__name__)

_NO_MATCHING_SUBSCRIBERS = 16
_PACKET_TOO_LARGE = 149
#: "stored" answers kept for a resend that has not happened yet
EARLY_ANSWERS = 64


class MqttTransport:
    """The uplink's MQTT transport (``uplink.transport = "mqtt"``, ``format = "coldgate"``)."""

    def __init__(self, config: UplinkConfig, gateway_id: str) -> None:
        mq = config.mqtt
        if mq is None:
            raise ConfigError("uplink", [ConfigProblem("uplink.mqtt", "missing: the MQTT transport needs a broker")])
        self.config = config
        self.mqtt: MqttConfig = mq
        self.gateway_id = gateway_id
        self.topic = wire.batches_topic(mq.prefix, gateway_id)
        self.acks = wire.acks_topic(mq.prefix, gateway_id)
        self._waiting: tuple[str, str] | None = None
        #: the batch in flight ("first-last") and since when (monotonic), for status
        self._in_flight: tuple[str, float] | None = None
        self._answer: dict[str, Any] | None = None
        #: "stored" answers that came while nothing waited (queued in the session while the
        #: agent was down, or after a timeout): the resend of that key takes them
        self._early: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.session = session_from_config(config, gateway_id, subscribe=[self.acks], on_message=self._on_answer)

    @classmethod
    def from_config(cls, config: UplinkConfig, gateway_id: str) -> Any:
        """The transport ``[uplink.mqtt] format`` names (coldgate or ThingsBoard)."""
        require_paho()
        if config.mqtt is not None and config.mqtt.format == "thingsboard":
            from agent.uplink.thingsboard import ThingsBoardTransport

            return ThingsBoardTransport(config, gateway_id)
        return cls(config, gateway_id)

    def _on_answer(self, message: Any) -> None:
        doc = wire.decode_answer(message.payload)
        if doc is None:
            log.warning("ignoring a message on %s that is not an answer", message.topic)
            return
        with self.session.condition:
            waiting = self._waiting
            if waiting is not None and wire.answer_matches(doc, *waiting):
                self._answer = doc
                self.session.condition.notify_all()
                return
            key = doc.get("idempotency_key")
            if doc.get("status") == 200 and isinstance(key, str):
                self._early[key] = doc
                while len(self._early) > EARLY_ANSWERS:
                    self._early.popitem(last=False)
        log.debug("answer for %s while it was not in flight: kept for its resend", doc.get("idempotency_key"))

    def send(self, batch: Batch) -> Answer:
        attempt = secrets.token_hex(8)
        payload = wire.encode_envelope(batch.key, wire.batch_body(batch), attempt)
        session = self.session
        with session.condition:
            early = self._early.pop(batch.key, None)
        if early is not None:
            log.info("batch %s: stored, by an answer that came before this resend", batch.key)
            return wire.interpret(early, batch)
        session.wait_ready(self.config.connect_timeout_s)
        if session.max_packet and len(payload) + len(self.topic) + 64 > session.max_packet:
            raise SyncTooLarge(f"batch {batch.first}-{batch.last} ({len(payload)} bytes) is over the broker's "
                               f"maximum packet size ({session.max_packet})", status=413)
        props = None
        if session.mqtt5:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = self.mqtt.message_expiry_s
            props.ResponseTopic = self.acks
            props.CorrelationData = attempt.encode()
            props.ContentType = "application/vnd.coldgate.batch"
            props.UserProperty = [("Idempotency-Key", batch.key)]
        with session.condition:
            early = self._early.pop(batch.key, None)  # it may have come while connecting
            if early is not None:
                return wire.interpret(early, batch)
            self._waiting, self._answer = (batch.key, attempt), None
        self._in_flight = (f"{batch.first}-{batch.last}", time.monotonic())
        try:
            mid = session.publish(self.topic, payload, props)
            # until the answer, a refusing PUBACK, or the timeout (a PUBACK saying "taken" is no answer)
            got = session.wait(lambda: self._answer is not None or session.puback(mid) not in (None, 0),
                               self.mqtt.answer_timeout_s)
            if self._answer is not None:
                return wire.interpret(self._answer, batch)
            code = session.puback(mid)
            if not got or code is None:
                took = "took it" if code == 0 else "did not confirm it"
                raise SyncTransient(f"no answer from the consumer within {self.mqtt.answer_timeout_s:g} s "
                                    f"(the broker {took}): batch {batch.first}-{batch.last} kept for a resend")
            if code == _NO_MATCHING_SUBSCRIBERS:
                raise SyncTransient(f"no consumer is subscribed to {self.topic} on {session.url}: "
                                    "batch not acknowledged, kept for later")
            if code == _PACKET_TOO_LARGE:
                raise SyncTooLarge(f"broker refused batch {batch.first}-{batch.last}: packet too large", status=413)
            raise refusal(puback_reason(code), f"broker {session.url} refused batch {batch.first}-{batch.last}")
        finally:
            with session.condition:
                self._waiting = None
            self._in_flight = None
            session.forget()  # whatever happened, paho holds no batch of ours afterwards

    def link(self) -> dict[str, Any]:
        """The broker connection and the answer waited for, for ``coldgate status``."""
        flight = self._in_flight
        return {**self.session.link(), "answer_timeout_s": self.mqtt.answer_timeout_s,
                "waiting_for_answer": None if flight is None else flight[0],
                "waiting_s": None if flight is None else round(time.monotonic() - flight[1], 1)}

    def close(self) -> None:
        self.session.close()
