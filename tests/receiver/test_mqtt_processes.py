"""End to end with real processes: store → MQTT transport → Mosquitto → ``coldgate receiver
--mqtt`` processes → one SQLite receiver database.

The gateway side is a small loop over a real :class:`~agent.store.Store` (append, take
``pending``, send, ``ack`` on an answer), standing in for the daemon's uplink loop. Each
test ends with the receiver's own report: every record once, no gap, a verified chain.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.exc import SyncError, SyncTransient
from agent.receiver import Receiver
from agent.store import Store
from agent.uplink.base import Batch
from agent.uplink.mqtt import MqttTransport
from tests.mosquitto import Mosquitto, reading, uplink_config, wait_until

pytestmark = pytest.mark.slow

GATEWAY = "gw-1"


class Consumer:
    """``coldgate receiver --mqtt`` in a subprocess; its stderr is collected as it comes."""

    def __init__(self, db: Path, broker: str, *args: str) -> None:
        self.db, self.broker, self.args = db, broker, list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, *extra: str) -> Consumer:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "receiver", "--mqtt", self.broker, "--db", str(self.db),
             *self.args, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self.reader.start()
        wait_until(lambda: any("receiver consuming" in line for line in self.lines) or self.proc.poll() is not None,
                   what="the consumer to subscribe")
        assert self.proc.poll() is None, "".join(self.lines)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self.lines.append(line)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.reader.join(10)  # to the end of its stderr, which it then closes
        return code

    def stored_count(self) -> int:
        """How many batch messages it stored, from the line it logs when it stops."""
        found = [re.search(r"(\d+) batch message\(s\) stored", x) for x in self.lines]
        return int(next(m for m in found if m).group(1))


@pytest.fixture
def consumers() -> Iterator[list[Consumer]]:
    made: list[Consumer] = []
    yield made
    for c in made:
        if c.proc is not None:
            c.stop(signal.SIGKILL)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store.db", gateway_id=GATEWAY)
    yield s
    s.close()


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for t in things:
        t.close()


def _consumer(consumers: list[Consumer], tmp_path: Path, broker: Mosquitto, *args: str) -> Consumer:
    c = Consumer(tmp_path / "rx.db", broker.url, "--share-group", "rx", *args)
    consumers.append(c)
    return c


def _transport(closing: list[Any], broker: Mosquitto, **mqtt: Any) -> MqttTransport:
    t = MqttTransport(uplink_config(broker.url, **{"answer_timeout_s": 1.0, "message_expiry_s": 30, **mqtt}), GATEWAY)
    closing.append(t)
    return t


def _append(store: Store, n: int) -> None:
    head = store.head()[0]
    store.append([reading(head + i) for i in range(n)])


class Sender:
    """The uplink loop in miniature: pending → send → ack on an answer, retry otherwise."""

    def __init__(self, store: Store, transport: MqttTransport, batch_size: int = 50) -> None:
        self.store, self.transport, self.batch_size = store, transport, batch_size
        self.answers: list[Any] = []
        self.failures: list[SyncError] = []

    def step(self) -> bool:
        """One batch; False once nothing is pending."""
        records = self.store.pending(self.batch_size)
        if not records:
            return False
        try:
            answer = self.transport.send(Batch(GATEWAY, self.store.stream_id, records))
        except SyncTransient as exc:
            self.failures.append(exc)
            return True
        self.answers.append(answer)
        self.store.ack(seq for seq, _, _ in records)
        return True

    def drain(self, timeout: float = 60) -> None:
        wait_until(lambda: not self.step(), timeout=timeout, what="the store to drain")


def _verified(db: Path, last_seq: int) -> dict[str, Any]:
    """The receiver's report of the one stream: every seq 1..last_seq once, chain verified."""
    with Receiver(db, create=False) as rx:
        report = rx.report(GATEWAY)
        rows = rx.records(GATEWAY)
    [stream] = report["gateways"][GATEWAY]["streams"].values()
    assert stream["verdict"] == "complete-and-verified", stream["verdict_reasons"]
    assert (stream["records"], stream["first_seq"], stream["last_seq"], stream["gaps"]) == (last_seq, 1, last_seq, [])
    assert [r["seq"] for r in rows] == list(range(1, last_seq + 1))  # each once
    assert stream["chain_breaks"] == [] and stream["conflicts"] == []
    return dict(stream)


def test_batches_are_acknowledged_end_to_end_and_stored_once(broker: Mosquitto, gateway: Store, tmp_path: Path,
                                                             consumers: list[Consumer], closing: list[Any]) -> None:
    _consumer(consumers, tmp_path, broker).start()
    _append(gateway, 600)
    sender = Sender(gateway, _transport(closing, broker))
    sender.drain()
    assert sender.failures == [] and sum(a.stored for a in sender.answers) == 601
    _verified(tmp_path / "rx.db", 601)


def test_a_broker_killed_and_restarted_mid_run_loses_nothing(broker: Mosquitto, gateway: Store, tmp_path: Path,
                                                             consumers: list[Consumer], closing: list[Any]) -> None:
    _consumer(consumers, tmp_path, broker).start()
    _append(gateway, 300)
    sender = Sender(gateway, _transport(closing, broker, connect_timeout_s=1.0))
    for _ in range(3):
        sender.step()
    broker.stop(kill=True)  # its sessions and queued messages are gone with it
    _append(gateway, 300)
    assert sender.step() and sender.failures  # not connected: kept
    broker.start()
    sender.drain()
    _verified(tmp_path / "rx.db", 601)


def test_a_consumer_killed_between_its_commit_and_its_answer_leaves_nothing_twice(
        broker: Mosquitto, gateway: Store, tmp_path: Path, consumers: list[Consumer], closing: list[Any]) -> None:
    c = _consumer(consumers, tmp_path, broker, "--allow-faults").start("--fault", '{"exit_after_store": true}')
    _append(gateway, 100)
    sender = Sender(gateway, _transport(closing, broker))
    assert sender.step() and sender.failures  # stored, then the consumer died: no answer
    assert c.stop() == 70
    first = gateway.pending(50)
    c.start()
    sender.drain()
    assert sender.answers[0].duplicates == len(first)  # the resend of what was already stored
    assert _verified(tmp_path / "rx.db", 101)["duplicates"] == len(first)


def test_a_consumer_sigkilled_before_its_commit_gets_the_batch_again_from_its_session(
        broker: Mosquitto, gateway: Store, tmp_path: Path, consumers: list[Consumer], closing: list[Any]) -> None:
    session = ("--client-id", "rx-1", "--session-expiry", "600")
    c = _consumer(consumers, tmp_path, broker, *session, "--allow-faults")
    c.start("--fault", '{"delay_s": 60}')
    _append(gateway, 100)
    sender = Sender(gateway, _transport(closing, broker))
    assert sender.step() and sender.failures  # the consumer holds it, unacknowledged
    c.stop(signal.SIGKILL)
    c.start()  # the same session: the broker redelivers what it never PUBACKed
    with Receiver(tmp_path / "rx.db", create=False) as rx:
        wait_until(lambda: rx.records(GATEWAY), what="the redelivered batch stored")
    sender.drain()
    _verified(tmp_path / "rx.db", 101)


def test_with_the_consumers_down_the_backlog_stays_on_the_gateway(broker: Mosquitto, gateway: Store, tmp_path: Path,
                                                                  consumers: list[Consumer],
                                                                  closing: list[Any]) -> None:
    c = _consumer(consumers, tmp_path, broker).start()
    _append(gateway, 200)
    sender = Sender(gateway, _transport(closing, broker))
    sender.step()
    c.stop()
    queue = {k: gateway.stats()[k] for k in ("pending", "acked_kept", "set_aside", "oldest_pending_ts")}
    assert queue["pending"] == 200
    for _ in range(3):
        sender.step()
    assert len(sender.failures) == 3 and all("no consumer is subscribed" in str(f) for f in sender.failures)
    assert {k: gateway.stats()[k] for k in queue} == queue  # nothing acknowledged while nobody stored it
    c.start()
    sender.drain()
    _verified(tmp_path / "rx.db", 201)


def test_a_dropped_answer_is_resent_and_answered_as_duplicates(broker: Mosquitto, gateway: Store, tmp_path: Path,
                                                               consumers: list[Consumer], closing: list[Any]) -> None:
    _consumer(consumers, tmp_path, broker, "--allow-faults").start(
        "--fault", json.dumps({"drop_response": True, "times": 2}))
    _append(gateway, 100)
    sender = Sender(gateway, _transport(closing, broker))
    sender.drain()
    assert len(sender.failures) == 2
    assert sender.answers[0].duplicates > 0
    _verified(tmp_path / "rx.db", 101)


def test_two_consumers_split_the_load_through_the_shared_subscription(
        broker: Mosquitto, gateway: Store, tmp_path: Path, consumers: list[Consumer], closing: list[Any]) -> None:
    a = _consumer(consumers, tmp_path, broker).start()
    b = _consumer(consumers, tmp_path, broker).start()
    _append(gateway, 1000)
    sender = Sender(gateway, _transport(closing, broker), batch_size=25)
    sender.drain()
    assert a.stop() == 0 and b.stop() == 0
    assert a.stored_count() > 5 and b.stored_count() > 5
    assert a.stored_count() + b.stored_count() == len(sender.answers)
    _verified(tmp_path / "rx.db", 1001)


def test_chaos_broker_restart_consumer_kills_and_dropped_answers_end_verified(
        broker: Mosquitto, gateway: Store, tmp_path: Path, consumers: list[Consumer], closing: list[Any]) -> None:
    """Two consumers; the broker killed once; each consumer SIGKILLed once at a random batch and
    restarted; answers dropped: the receiver ends with every record once, no gap, verified."""
    a = _consumer(consumers, tmp_path, broker, "--allow-faults")
    a.start("--fault", json.dumps({"drop_response": True, "times": 3}))
    b = _consumer(consumers, tmp_path, broker).start()
    rng = random.Random(13)
    sender = Sender(gateway, _transport(closing, broker, connect_timeout_s=2.0), batch_size=40)
    events = {rng.randrange(3, 10): "kill a", rng.randrange(12, 18): "broker", rng.randrange(20, 26): "kill b"}
    for step in range(30):
        _append(gateway, 40)
        what = events.get(step)
        if what == "broker":
            broker.stop(kill=True)
            broker.start()
        elif what is not None:
            victim = a if what == "kill a" else b
            victim.stop(signal.SIGKILL)
            victim.start()
        sender.step()
    sender.drain(timeout=90)
    _verified(tmp_path / "rx.db", gateway.head()[0])
    assert sender.failures  # the faults did happen, and were survived
