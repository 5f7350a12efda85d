"""A real Mosquitto broker per test, on a free loopback port, configured in ``tmp_path``.

No system service is used or needed: each :class:`Mosquitto` is its own process with its
own config, persistence directory and log, and the ``broker`` fixture kills it after the
test. A missing ``mosquitto`` binary fails the test with the command that installs it
(``.ci/run`` does): these tests are never skipped.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if found is None:
        pytest.fail("the MQTT tests need Mosquitto: apt-get install -y mosquitto (as root; .ci/run does it)",
                    pytrace=False)
    return found


class Mosquitto:
    """One broker process. ``restart()`` keeps the port; ``kill=True`` is a SIGKILL (no save)."""

    def __init__(self, root: Path, *, persistence: bool = False, users: dict[str, str] | None = None,
                 acl: str | None = None, tls: dict[str, Path] | None = None, extra: tuple[str, ...] = ()) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistence = persistence
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "user root",  # started as root it would drop to 'mosquitto', who cannot write tmp_path
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {root}/",
            f"log_dest file {root}/mosquitto.log",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            "max_queued_messages 1000",
            "set_tcp_nodelay true",  # as docs/mqtt.md advises: no 40 ms Nagle stall per answer
        ]
        if users is not None:
            pw = root / "passwd"
            pw.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", str(pw), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        elif tls is not None and "require_certificate" in tls:
            lines += ["allow_anonymous false"]
        else:
            lines += ["allow_anonymous true"]
        if acl is not None:
            (root / "acl").write_text(acl)
            lines.append(f"acl_file {root}/acl")
        if tls is not None:
            lines += [f"cafile {tls['cafile']}", f"certfile {tls['certfile']}", f"keyfile {tls['keyfile']}"]
            if "require_certificate" in tls:
                lines += ["require_certificate true", "use_identity_as_username true"]
        lines += list(extra)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"mosquitto exited at start ({self.proc.returncode}): {err} {self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"mosquitto did not listen on {self.port} within 10 s: {self.log()[-2000:]}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def log(self) -> str:
        p = self.root / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[object]:
    """``broker_factory(**options)`` starts a broker; every one is stopped after the test."""
    started: list[Mosquitto] = []

    def make(**options: object) -> Mosquitto:
        b = Mosquitto(tmp_path / f"mosquitto{len(started)}", **options)  # type: ignore[arg-type]
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop(kill=True)


@pytest.fixture
def broker(broker_factory: object) -> Mosquitto:
    """A plain broker: anonymous, no persistence."""
    return broker_factory()  # type: ignore[operator, no-any-return]


# -- a stand-in consumer, and the gateway's side -------------------------------------------


class Responder:
    """A stand-in consumer on a real paho client: records each batch message and answers it
    as ``answer(envelope)`` says: ``(status, fields)``, a list of raw ``(key, attempt,
    status, fields)`` answers to publish in order, or None for no answer at all."""

    def __init__(self, url: str, answer: Any = None, *, prefix: str = "coldgate") -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.mqtt import wire

        self.wire = wire
        self.prefix = prefix
        self.answer = answer or (lambda env: (200, {"stored": 1, "duplicates": 0, "conflicts": 0}))
        self.messages: list[tuple[str, Any]] = []
        self._ready = threading.Event()
        parsed = wire.parse_broker_url(url)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/batches", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self._ready.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect_async(parsed.host, parsed.port)
        self.client.loop_start()

    def wait_ready(self, timeout: float = 10) -> Responder:
        assert self._ready.wait(timeout), "the stand-in consumer did not subscribe"
        return self

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        env = self.wire.decode_envelope(message.payload)
        self.messages.append((message.topic, env))
        gateway = self.wire.gateway_of(self.prefix, message.topic)
        out = self.answer(env)
        if out is None:
            return
        answers = out if isinstance(out, list) else [(env.idempotency_key, env.attempt, *out)]
        for key, attempt, status, fields in answers:
            client.publish(self.wire.acks_topic(self.prefix, gateway),
                           self.wire.encode_answer(key, attempt, status, fields), qos=1)

    def close(self) -> None:
        close_client(self.client)


def close_client(client: Any) -> None:
    """Disconnect a paho client, stop its thread and close its sockets (its wake-up socket
    pair too, which paho otherwise leaves to the garbage collector)."""
    client.disconnect()
    client.loop_stop()
    client._reset_sockets()


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll an observable outcome with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def uplink_config(broker: str, *, gateway_id: str = "gw-1", **mqtt: Any) -> Any:
    """An ``[uplink]`` with ``transport = "mqtt"`` for ``broker``; ``mqtt`` overrides ``[uplink.mqtt]``."""
    from agent.config import MqttConfig, UplinkConfig

    tls = {k: mqtt.pop(k) for k in ("ca_bundle", "client_cert", "client_key") if k in mqtt}
    return UplinkConfig(transport="mqtt", connect_timeout_s=mqtt.pop("connect_timeout_s", 5.0), **tls,
                        mqtt=MqttConfig(broker=broker, **{"answer_timeout_s": 5.0, **mqtt}))


def reading(i: int) -> dict[str, Any]:
    return {"type": "reading", "ts": 1_795_000_000.0 + i, "time_quality": "synced", "sensor_id": "p1",
            "quantity": "temperature", "value": round(4.0 + i / 8, 3), "unit": "Cel"}


# -- a private CA for TLS tests -------------------------------------------------------------


def make_pki(d: Path, *, client_cn: str = "gw-1") -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN ``client_cn``)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool = False,
             ip: str | None = None) -> Any:
        now = dt.datetime.now(dt.UTC)
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ip:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(stem: str, c: Any, key: Any = None) -> None:
        (d / f"{stem}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            kp = d / f"{stem}.key"
            kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
            kp.chmod(0o600)

    d.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, srv_key, cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = cert("coldgate test CA", ca_key, "coldgate test CA", ca_key, ca=True)
    write("ca", ca)
    write("other-ca", cert("another CA", other_key, "another CA", other_key, ca=True))
    write("server", cert("127.0.0.1", srv_key, "coldgate test CA", ca_key, ip="127.0.0.1"), srv_key)
    write("client", cert(client_cn, cli_key, "coldgate test CA", ca_key), cli_key)
    return {n: d / n for n in ("ca.pem", "other-ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
