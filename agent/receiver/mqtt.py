"""The central consumer for the MQTT uplink: ``coldgate receiver --mqtt URL``.

Subscribes to ``$share/<group>/<prefix>/+/batches`` (an MQTT 5 shared subscription: the
broker hands each batch to one consumer of the group, so several consumers split a
fleet's load), and for each message, on one worker thread, in order:

1. takes the envelope apart (:mod:`agent.mqtt.wire`) and validates the body with
   :func:`agent.receiver.validate.validate_batch`, exactly as ``POST /v1/batches`` does;
   the topic's gateway id must be the batch's ``gateway_id`` (else a 403 answer);
2. stores it with :meth:`Receiver.store_batch` (committed when it returns);
3. publishes the answer to ``<prefix>/<gateway_id>/acks`` (QoS 1) and waits for the
   broker's PUBACK of it;
4. only then PUBACKs the batch (paho ``manual_ack``): a consumer killed anywhere before
   leaves the batch unacknowledged, and the broker redelivers it to this session when it
   reconnects (or the gateway, having had no answer, resends it): stored once either way,
   answered ``duplicates`` the second time.

Per-gateway authorisation is the broker's job (a gateway may publish only under its own
id: see the ACL example in ``docs/mqtt.md``); the consumer's own check in step 1 stops a
gateway whose batches claim another id. Fault injection (``allow_faults``) takes the same
plan as the HTTP front end (:mod:`agent.receiver.faults`), one fault per batch message.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

from agent.exc import SyncError
from agent.mqtt import wire
from agent.mqtt.session import BrokerSession
from agent.receiver import Receiver, validate

log = logging.getLogger("agent.receiver")

#: how long to wait for the broker's PUBACK of an answer before leaving the batch to be redelivered
ANSWER_PUBACK_S = 10.0


@dataclass(frozen=True)
class Outcome:
    """What one batch message comes to: the answer to publish (None: none) and where."""

    topic: str | None
    payload: bytes | None
    status: int


class MqttConsumer:
    """Consumes batches from a broker into a :class:`Receiver`. See the module docstring."""

    def __init__(self, receiver: Receiver, broker: str, *, prefix: str = "coldgate", share_group: str = "coldgate",
                 client_id: str | None = None, session_expiry_s: int | None = None, username: str | None = None,
                 password: str | None = None, tls: Any = None, receive_maximum: int = 16,
                 connect_timeout_s: float = 10.0) -> None:
        self.receiver = receiver
        self.url = wire.parse_broker_url(broker)
        self.prefix = wire.check_prefix(prefix)
        wire.check_prefix(share_group)
        if "/" in share_group:
            raise ValueError("a share group is one topic level")
        self.filter = wire.shared_batches_filter(prefix, share_group)
        self.connect_timeout_s = connect_timeout_s
        self._inbox: queue.Queue[tuple[Any, int]] = queue.Queue()
        self._stop = threading.Event()
        self.handled = 0
        self.session = BrokerSession(
            self.url, client_id=client_id or "", session_expiry_s=session_expiry_s, username=username,
            password=password, tls=tls, subscribe=[self.filter], on_message=self._received, manual_ack=True,
            connect_timeout_s=connect_timeout_s, receive_maximum=receive_maximum, max_queued=receive_maximum + 4)
        self._worker: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, subscribe, and start the worker; raises SyncError if the broker says no."""
        self.session.wait_ready(self.connect_timeout_s)
        self._worker = threading.Thread(target=self._work, name="mqtt-consumer", daemon=True)
        self._worker.start()
        log.info("receiver consuming %s on %s (db %s)", self.filter, self.url, self.receiver.store.path)

    def stop(self) -> None:
        """Finish the batch in hand, then disconnect; batches not yet taken stay with the broker."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(ANSWER_PUBACK_S + 5)
        self.session.close()
        log.info("receiver: %d batch message(s) stored (new records or duplicates) by this consumer", self.handled)

    def serve_forever(self) -> None:
        """Consume until SIGTERM or SIGINT, then stop cleanly."""
        stopping = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                log.info("receiver: %s, stopping", signal.Signals(signum).name)
                stopping.set()

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        self.start()
        try:
            stopping.wait()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("receiver stopped")

    # -- messages ----------------------------------------------------------------------------

    def _received(self, message: Any) -> None:
        # paho's network thread: hand over, with the connection it came on (a PUBACK is only
        # meaningful on that connection; after a reconnect the broker redelivers instead)
        self._inbox.put((message, self.session.connects))

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                message, generation = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._process(message, generation)
            except Exception:  # noqa: BLE001 - one bad message must not stop the consumer
                log.exception("receiver: failed on a message from %s; left to be redelivered", message.topic)

    def _process(self, message: Any, generation: int) -> None:
        fault = self.receiver.faults.next() if self.receiver.allow_faults else None
        if fault is not None:
            log.info("receiver: injecting fault %s", fault.describe())
            if fault.delay_s and self._stop.wait(fault.delay_s):
                return  # stopping: left unacknowledged, redelivered to this session later
            if fault.reset:  # lost in transit: neither stored nor answered
                self._ack(message, generation)
                return
            if fault.status is not None:
                outcome = self._refuse(message, fault.status, f"injected fault: {fault.status}")
                self._answer_then_ack(message, generation, outcome)
                return
        outcome = self.handle(message.topic, message.payload)
        if fault is not None and fault.drop_response:  # stored, but the answer is lost
            self._ack(message, generation)
            return
        if fault is not None and fault.exit_after_store:
            log.warning("receiver: injected fault: exiting after the commit, before answering")
            os._exit(70)
        self._answer_then_ack(message, generation, outcome)

    def _refuse(self, message: Any, status: int, error: str) -> Outcome:
        gateway = wire.gateway_of(self.prefix, message.topic)
        try:
            env = wire.decode_envelope(message.payload)
            key, attempt = env.idempotency_key, env.attempt
        except wire.EnvelopeError as exc:
            key, attempt = None, exc.attempt
        payload = wire.encode_answer(key, attempt, status, {"error": error})
        return Outcome(wire.acks_topic(self.prefix, gateway) if gateway else None, payload, status)

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Validate and store one batch message; the answer to publish. Commits before returning."""
        gateway = wire.gateway_of(self.prefix, topic)
        if gateway is None:
            log.warning("receiver: message on %s, not <prefix>/<gateway_id>/batches: dropped", topic)
            return Outcome(None, None, 400)
        acks = wire.acks_topic(self.prefix, gateway)
        key = attempt = None
        try:
            env = wire.decode_envelope(payload)
            key, attempt = env.idempotency_key, env.attempt
            batch = validate.read_batch(env.body, env.content_encoding, self.receiver.max_body, key)
        except wire.EnvelopeError as exc:
            log.warning("receiver: 400 from %s: %s", gateway, exc)
            return Outcome(acks, wire.encode_answer(None, exc.attempt, 400, {"error": str(exc)}), 400)
        except validate.BodyError as exc:
            log.warning("receiver: %d from %s: %s %s", exc.status, gateway, exc, exc.problems[:3])
            return Outcome(acks, wire.encode_answer(key, attempt, exc.status, exc.as_json()), exc.status)
        if batch.gateway_id != gateway:
            error = f"topic is for gateway {gateway!r}, the batch says {batch.gateway_id!r}"
            log.warning("receiver: 403: %s", error)
            return Outcome(acks, wire.encode_answer(key, attempt, 403, {"error": error}), 403)
        try:
            result = self.receiver.store_batch(batch)  # committed when it returns
        except Exception as exc:  # noqa: BLE001 - the database failed: the gateway retries later
            log.exception("receiver: storing %s failed", key)
            return Outcome(acks, wire.encode_answer(key, attempt, 503, {"error": f"storage failed: {type(exc).__name__}"}),
                           503)
        self.handled += 1
        return Outcome(acks, wire.encode_answer(key, attempt, 200, result), 200)

    def _answer_then_ack(self, message: Any, generation: int, outcome: Outcome) -> None:
        if outcome.topic is not None and outcome.payload is not None:
            try:
                mid = self.session.publish(outcome.topic, outcome.payload)
            except SyncError as exc:
                log.warning("receiver: answer not sent (%s): the batch is left to be redelivered", exc)
                return
            self.session.wait(lambda: self.session.puback(mid) is not None or self._stop.is_set(), ANSWER_PUBACK_S)
            confirmed = self.session.puback(mid) is not None
            self.session.discard(mid)
            if not confirmed:
                log.warning("receiver: the broker did not confirm the answer: the batch is left to be redelivered")
                return
        self._ack(message, generation)

    def _ack(self, message: Any, generation: int) -> None:
        if generation != self.session.connects:
            return  # received on an earlier connection: the broker redelivers it on this one
        self.session.ack(message.mid, message.qos)
