"""The one place paho-mqtt is driven: connect, TLS, credentials, sessions, PUBACKs.

:class:`BrokerSession` keeps one paho client connected in the background and says why it
is not (a refused CONNACK or SUBACK, a TLS or socket error, a disconnect), translating
paho's and the socket layer's errors into ours once, here. The MQTT transports
(:mod:`agent.uplink.mqtt`, :mod:`agent.uplink.thingsboard`) and the central consumer
(:mod:`agent.receiver.mqtt`) all use it. paho is imported here only, and only when an
MQTT part is used: a gateway on the HTTP uplink never imports it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.exc import AuthRefused, ConfigError, ConfigProblem, SyncError, SyncTransient
from agent.mqtt import wire
from agent.secretfile import check_secret_file

if TYPE_CHECKING:  # the gateway's config, read by session_from_config only
    from agent.config import UplinkConfig

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode
except ImportError:  # pragma: no cover - exercised by installs without the extra
    paho = None  # type: ignore[assignment]
    CallbackAPIVersion = PacketTypes = Properties = ReasonCode = None  # type: ignore[assignment, misc]

log = logging.getLogger(__name__)
_paho_log = logging.getLogger("agent.mqtt.paho")

#: CONNACK / SUBACK / PUBACK reason codes that mean "these credentials are refused"
_AUTH_CODES = {134: 401, 135: 403, 138: 403, 140: 401}


def require_paho() -> None:
    """Raise a ConfigError that says how to install the extra, when paho-mqtt is missing."""
    if paho is None:
        raise ConfigError("uplink", [ConfigProblem(
            "uplink.transport", "the MQTT transport needs paho-mqtt", "pip install 'coldgate[mqtt]'")])


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails: paho leaves it open."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(ca_bundle: Path | None, client_cert: Path | None, client_key: Path | None,
                verify: bool = True) -> ssl.SSLContext:
    """A client TLS context: the system CAs or ``ca_bundle``, optionally a client certificate."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if client_cert is not None:
            ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        ctx.sslsocket_class = _ClosingSSLSocket
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("uplink", [ConfigProblem("uplink.ca_bundle/client_cert", f"TLS files unusable: {exc}")]) from exc
    return ctx


def _reason(exc: BaseException) -> str:
    """An OS or TLS error said plainly ("certificate verify failed: …", "Connection refused")."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def puback_reason(code: int) -> Any:
    """A PUBACK reason code as paho names it ("Not authorized"), or the bare number."""
    try:
        return ReasonCode(PacketTypes.PUBACK, identifier=code)
    except (KeyError, ValueError):
        return code


def refusal(code: Any, what: str) -> SyncError:
    value = int(getattr(code, "value", code))
    if value in _AUTH_CODES:
        return AuthRefused(f"{what}: {code}", status=_AUTH_CODES[value])
    return SyncTransient(f"{what}: {code}")


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: TCP_NODELAY on the broker connection.

    A batch and its answer are a request and a response of a few packets each; with
    Nagle's algorithm (paho leaves it on) a small packet written while the peer has not yet
    acknowledged the previous one waits for the peer's delayed ACK, about 40 ms on Linux:
    two such waits were most of a batch's round trip (85 ms for 500 records on loopback)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a Unix socket, a websocket wrapper)
        pass


class BrokerSession:
    """One paho client kept connected in the background, with the reasons it is not.

    ``session_expiry_s=None`` asks for a clean session; otherwise the session (its
    subscriptions and the QoS 1 messages queued for it) outlives a disconnect by that long.
    ``on_message`` runs on paho's network thread: keep it short (hand work to a queue).
    """

    def __init__(self, url: wire.BrokerURL, *, client_id: str, mqtt5: bool = True, keepalive_s: int = 60,
                 session_expiry_s: int | None = 86_400, username: str | None = None, password: str | None = None,
                 tls: ssl.SSLContext | None = None, subscribe: Sequence[str] = (),
                 on_message: Callable[[Any], None] | None = None, manual_ack: bool = False,
                 connect_timeout_s: float = 5.0, receive_maximum: int | None = None, max_queued: int = 1) -> None:
        require_paho()
        self.url = url
        self.mqtt5 = mqtt5
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.subscriptions = list(subscribe)
        self._on_message = on_message
        self._cond = threading.Condition()
        self._started = False
        self._closing = False
        self.connected = False
        self._subscribed: set[str] = set()
        self._sub_mids: dict[int, str] = {}
        self._refused: SyncError | None = None
        self.last_error: str | None = None
        self.session_present: bool | None = None
        self.max_packet: int | None = None
        self.connects = 0
        #: since when (monotonic) this client has had no connection; None while connected
        self.down_since: float | None = time.monotonic()
        self._acks: dict[int, int] = {}
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311,
                             clean_session=None if mqtt5 else session_expiry_s is None, manual_ack=manual_ack)
        client.suppress_exceptions = True  # a bug in a callback is logged, it does not kill the network thread
        client.on_log = self._log_cb
        client.max_queued_messages_set(max_queued)
        client.reconnect_delay_set(1, 30)
        client.connect_timeout = connect_timeout_s
        if tls is not None:
            client.tls_set_context(tls)
        if username is not None:
            client.username_pw_set(username, password)
        client.on_connect = self._connected_cb
        client.on_disconnect = self._disconnected_cb
        client.on_connect_fail = self._connect_failed_cb
        client.on_subscribe = self._subscribed_cb
        client.on_publish = self._published_cb
        client.on_message = self._message_cb
        client.on_socket_open = _no_delay
        self._receive_maximum = receive_maximum
        self.client = client

    # -- paho's callbacks (network thread) ------------------------------------------------

    def _connected_cb(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            with self._cond:
                self._refused = refusal(reason, f"broker {self.url} refused the connection")
                self.last_error = str(self._refused)
                self._cond.notify_all()
            log.warning("%s", self.last_error)
            return
        with self._cond:
            lost = self.connects > 0 and self.session_present is not None and not flags.session_present
            self.connected, self._refused, self.last_error, self.down_since = True, None, None, None
            self.session_present = bool(flags.session_present)
            self.max_packet = getattr(properties, "MaximumPacketSize", None)
            self.connects += 1
            self._subscribed.clear()
            self._cond.notify_all()
        log.info("connected to %s (session %s)", self.url, "resumed" if flags.session_present else "new")
        if lost:
            log.warning("broker %s lost this client's session: answers queued during the outage are gone "
                        "(the batch in flight is resent and answered as duplicates)", self.url)
        for topic in self.subscriptions:  # every time: a lost session lost its subscriptions too
            rc, mid = client.subscribe(topic, qos=1)
            with self._cond:
                self._sub_mids[mid] = topic

    def _subscribed_cb(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        with self._cond:
            topic = self._sub_mids.pop(mid, None)
            if topic is None:
                return
            if reasons and reasons[0].is_failure:
                self._refused = refusal(reasons[0], f"broker {self.url} refused the subscription to {topic}")
                self.last_error = str(self._refused)
                log.error("%s (check the broker's ACL for this client)", self.last_error)
            else:
                self._subscribed.add(topic)
            self._cond.notify_all()

    def _disconnected_cb(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            was = self.connected
            self.connected = False
            if was or self.down_since is None:
                self.down_since = time.monotonic()
            self._subscribed.clear()
            self.last_error = f"disconnected from {self.url}: {reason}"
            self._cond.notify_all()
        if was and not self._closing:
            log.warning("%s; reconnecting", self.last_error)

    def _connect_failed_cb(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around a reconnect: the error is at hand
        exc = sys.exc_info()[1]
        with self._cond:
            self.last_error = f"cannot connect to {self.url}: {_reason(exc) if exc else 'connection failed'}"
            self._cond.notify_all()

    def _published_cb(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            self._acks[mid] = int(getattr(reason, "value", reason) or 0)
            self._cond.notify_all()

    def _log_cb(self, client: Any, userdata: Any, level: int, text: str) -> None:
        # paho reports at ERR level what is routine here (a loop pass after a disconnect);
        # only an exception caught in one of our callbacks is an error
        if level == paho.MQTT_LOG_ERR and text.startswith("Caught exception"):
            log.error("MQTT callback failed: %s", text)
        else:
            _paho_log.debug("%s", text)

    def _message_cb(self, client: Any, userdata: Any, message: Any) -> None:
        if self._on_message is not None:
            self._on_message(message)

    # -- the caller's side -----------------------------------------------------------------

    def start(self) -> None:
        """Connect (raising a SyncTransient that says why not), then stay connected in the background."""
        if self._started:
            return
        kwargs: dict[str, Any] = {}
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s or 0
            if self._receive_maximum:
                props.ReceiveMaximum = self._receive_maximum
            kwargs = {"clean_start": self.session_expiry_s is None, "properties": props}
        try:
            self.client.connect(self.url.host, self.url.port, self.keepalive_s, **kwargs)
        except (OSError, ValueError) as exc:
            self.last_error = f"cannot connect to {self.url}: {_reason(exc)}"
            raise SyncTransient(self.last_error) from exc
        self.client.loop_start()
        self._started = True

    def wait_ready(self, timeout: float) -> None:
        """Return once connected and subscribed; else raise AuthRefused or SyncTransient."""
        self.start()
        deadline = time.monotonic() + timeout
        with self._cond:
            missing = [t for t in self.subscriptions if t not in self._subscribed and t not in self._sub_mids.values()]
            if self.connected and missing:  # refused last time: ask again (the ACL may have been fixed since)
                for topic in missing:
                    rc, mid = self.client.subscribe(topic, qos=1)
                    if mid is not None:
                        self._sub_mids[mid] = topic
            self._cond.wait_for(lambda: self._refused is not None or self.ready, max(0.0, deadline - time.monotonic()))
            if self._refused is not None:
                refused = self._refused
                if self.connected:  # a refused subscription: asked again next time
                    self._refused = None
                raise refused
            if not self.ready:
                raise SyncTransient(self.last_error or f"broker {self.url}: not connected after {timeout:g} s")

    def link(self) -> dict[str, Any]:
        """The connection as ``coldgate status`` shows it: connected, or why not and since when."""
        down = self.down_since
        return {"transport": "mqtt", "broker": str(self.url), "connected": self.connected,
                "session_present": self.session_present,
                "down_for_s": None if self.connected or down is None else round(time.monotonic() - down, 1),
                "error": None if self.connected else self.last_error}

    @property
    def ready(self) -> bool:
        return self.connected and self._subscribed.issuperset(self.subscriptions)

    def publish(self, topic: str, payload: bytes, properties: Any = None) -> int:
        """Publish with QoS 1; the message id. Refused (SyncTransient) unless connected."""
        with self._cond:
            if not self.connected:
                raise SyncTransient(self.last_error or f"broker {self.url}: not connected")
        info = self.client.publish(topic, payload, qos=1, properties=properties if self.mqtt5 else None)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            self.client.drop_out_messages()
            raise SyncTransient(f"publish to {self.url} failed: {paho.error_string(info.rc)}")
        return int(info.mid)

    def puback(self, mid: int) -> int | None:
        """The PUBACK's reason code for ``mid`` (0 = success), or None while not acknowledged."""
        with self._cond:
            return self._acks.get(mid)

    def discard(self, mid: int) -> None:
        """Forget the PUBACK bookkeeping of ``mid`` (a long-running consumer publishes many)."""
        with self._cond:
            self._acks.pop(mid, None)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (on the session's condition) until ``predicate()`` or the timeout; its last value."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def condition(self) -> threading.Condition:
        return self._cond

    def forget(self) -> None:
        """Take every unacknowledged message back out of paho: it must not replay them later."""
        self.client.drop_out_messages()
        with self._cond:
            self._acks.clear()

    def ack(self, mid: int, qos: int) -> None:
        """PUBACK a received message (``manual_ack=True``): only after it was dealt with."""
        self.client.ack(mid, qos)

    def close(self) -> None:
        """Disconnect and stop the network thread. Never raises."""
        self._closing = True
        try:
            self.client.drop_out_messages()
            self.client.disconnect()
            if self._started:
                self.client.loop_stop()
            # paho closes its wake-up socket pair only when the client is garbage-collected
            # (loop_stop leaves it open): close it now, so no socket outlives close()
            reset = getattr(self.client, "_reset_sockets", None)
            if reset is not None:
                reset()
        except Exception as exc:  # noqa: BLE001 - closing must not fail
            log.debug("closing the MQTT session: %s", exc)
        self._started = False


def session_from_config(config: UplinkConfig, gateway_id: str, *, subscribe: Sequence[str] = (),
                        on_message: Callable[[Any], None] | None = None, max_queued: int = 1) -> BrokerSession:
    """A :class:`BrokerSession` for the agent, from ``[uplink]`` and ``[uplink.mqtt]``."""
    require_paho()
    mq = config.mqtt
    assert mq is not None
    url = wire.parse_broker_url(mq.broker)
    username, password = mq.username or gateway_id, None
    if mq.password is not None:
        password = mq.password.get_secret_value()
    elif mq.password_file is not None:
        password = check_secret_file(mq.password_file, "uplink.mqtt.password_file")
    elif mq.token_file is not None:
        username = check_secret_file(mq.token_file, "uplink.mqtt.token_file")
    tls = tls_context(config.ca_bundle, config.client_cert, config.client_key, config.verify_tls) if url.tls else None
    return BrokerSession(url, client_id=mq.client_id or f"coldgate-{gateway_id}", mqtt5=mq.protocol == "5",
                         keepalive_s=mq.keepalive_s, session_expiry_s=mq.session_expiry_s, username=username,
                         password=password, tls=tls, subscribe=subscribe, on_message=on_message,
                         connect_timeout_s=config.connect_timeout_s, max_queued=max_queued)
