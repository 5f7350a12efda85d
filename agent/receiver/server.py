"""HTTP for the reference receiver: stdlib ``http.server``, one thread per connection.

Routes: ``POST /v1/batches``, ``GET /v1/report[?gateway_id=]``, ``GET /v1/fleet``,
``GET /v1/health``, and when faults are allowed ``GET``/``POST /v1/_faults``. HTTP/1.1
with keep-alive, so a draining gateway reuses its connection. Every response that is not
a fault's dropped connection carries a JSON body.

TLS (``tls`` on the :class:`Receiver`): the handshake runs in the connection's thread,
under the read timeout; with a client CA, a verified client certificate whose common name
is a registry entry's ``certificate_cn`` identifies that gateway (mutual TLS).

Bounded against slow or hostile clients: every read on a connection waits at most
``read_timeout`` seconds (an idle keep-alive connection is closed after that too); at
most ``max_connections`` are served at once and one more is answered 503 with
``Retry-After`` at once, without a thread; the listen backlog is 128. Anything unexpected
while handling a request is a 500 with a JSON body and one log line, never a dropped
connection.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from agent import __version__
from agent.receiver import validate
from agent.receiver.storage import ReceiverError, StorageUnavailable

if TYPE_CHECKING:
    from agent.receiver import Receiver

log = logging.getLogger("agent.receiver")

_DRAIN_LIMIT = 64 << 20  # bytes of an oversized body read and thrown away before answering 413


def _common_name(cert: Any) -> str | None:
    """The subject's commonName of a verified peer certificate (``getpeercert()``'s form)."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class ReceiverHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that can be closed while clients hold keep-alive connections.

    ``server_close`` shuts down every open connection (a handler blocked waiting for the
    next request then returns) and joins the handler threads, so a test that stops the
    server leaves no thread and no socket behind.
    """

    daemon_threads = True
    block_on_close = True
    request_queue_size = 128  # the listen backlog (socketserver's default is 5)
    server_address: tuple[str, int]  # AF_INET, bound: getsockname() gives (host, port)

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        self.closing = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, BatchHandler)

    def get_request(self) -> tuple[Any, Any]:
        """Accept; with TLS, wrap without the handshake, which the connection's own thread does
        under the read timeout (a client that never completes it must not hold the accept loop)."""
        sock, addr = self.socket.accept()
        tls = self.receiver.tls
        if tls is not None:
            sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            busy = len(self._open) >= self.receiver.max_connections
            if not busy:
                self._open.add(request)
        if busy:
            self._refuse_busy(request, client_address)
            return
        super().process_request(request, client_address)

    def _refuse_busy(self, request: socket.socket, client_address: Any) -> None:
        """Answer 503 at once, from the accepting thread, and close: no thread for a connection over the limit."""
        body = json.dumps({"error": f"receiver busy: {self.receiver.max_connections} connections open"}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        log.warning("receiver: %s refused: %d connections open", client_address[0], self.receiver.max_connections)
        try:
            request.settimeout(1.0)
            request.sendall(head + body)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            request.close()

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        self.closing.set()
        with self._open_lock:
            for sock in list(self._open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("receiver: error handling a connection from %s", client_address[0])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.receiver.tls is not None else 'http'}://{host}:{port}"


class BatchHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's
    # delayed ACK (40 ms a request, which caps a backlog drain at a few thousand records/s).
    disable_nagle_algorithm = True
    server_version = f"coldgate-receiver/{__version__}"
    server: ReceiverHTTPServer

    # -- plumbing ---------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.receiver.read_timeout)  # every read waits at most this
        self.peer_cn: str | None = None

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as exc:  # timeouts included
                log.warning("receiver: TLS handshake with %s failed: %s", self.client_address[0],
                            getattr(exc, "reason", None) or exc)
                self.close_connection = True
                return
            self.peer_cn = _common_name(self.connection.getpeercert())
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout ran out during a delay fault, say). Whatever was
            # stored stays stored; its resend will be a duplicate.
            self.close_connection = True
            log.info("receiver: client %s went away before the %d response", self.address_string(), status)

    def _abort(self) -> None:
        """Close the connection at once, with a TCP reset and no response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # the reset goes out once the handler's file objects are closed
        except OSError:
            pass

    def _read_body(self) -> bytes | None:
        """The raw body, or None after answering 411/413 (the connection is then closed)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send_json(411, {"error": "chunked bodies are not accepted; send Content-Length"})
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send_json(411, {"error": "Content-Length is required"})
            return None
        limit = self.server.receiver.max_body
        if length > limit:
            # Refused without keeping it. A moderately large body is read and discarded so
            # the client, still sending, gets the 413 rather than a reset; a huge one is not.
            if length <= _DRAIN_LIMIT:
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 16))
                    if not chunk:
                        break
                    length -= len(chunk)
            self.close_connection = True
            self._send_json(413, {"error": f"body is over the limit of {limit} bytes"})
            return None
        return self.rfile.read(length)

    def _caller(self) -> str | None:
        """Who is calling: a gateway id, ``"*"`` (shared token or none required); None after answering 401/403.

        A verified client certificate whose common name the registry knows names the gateway;
        a token sent as well must then be the same gateway's.
        """
        receiver = self.server.receiver
        if receiver.open:
            return "*"
        auth = self.headers.get("Authorization")
        by_cert = receiver.gateway_for_certificate(self.peer_cn) if self.peer_cn else None
        if by_cert is not None:
            if auth and auth.startswith("Bearer ") and receiver.gateway_for_token(auth[7:].strip()) != by_cert:
                self._send_json(403, {"error": "the token is not the client certificate's gateway's"})
                return None
            return by_cert
        if not auth or not auth.startswith("Bearer "):
            self._send_json(
                401, {"error": "a Bearer token is required"}, {"WWW-Authenticate": 'Bearer realm="coldgate"'}
            )
            return None
        caller = receiver.gateway_for_token(auth[7:].strip())
        if caller is None:
            self._send_json(403, {"error": "token refused"})
        return caller

    def _authorised(self) -> bool:
        return self._caller() is not None

    # -- routes -----------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/v1/health":
            self._send_json(200, {"status": "ok", "receiver": self.server_version})
        elif url.path == "/v1/report":
            caller = self._caller()
            if caller is None:
                return
            gw = parse_qs(url.query).get("gateway_id", [None])[0]
            if caller != "*":
                if gw not in (None, caller):
                    self._send_json(403, {"error": "a gateway's token reads only its own report"})
                    return
                gw = caller
            self._guarded(lambda: self._send_json(200, self.server.receiver.report(gw)))
        elif url.path == "/v1/fleet":
            caller = self._caller()
            if caller is None:
                return
            if caller != "*":
                self._send_json(403, {"error": "a gateway's token does not read the fleet view"})
                return
            self._guarded(lambda: self._send_json(200, self.server.receiver.fleet()))
        elif url.path == "/v1/_faults" and self.server.receiver.allow_faults:
            if self._authorised():
                self._send_json(200, {"pending": self.server.receiver.faults.pending()})
        else:
            self._send_json(404, {"error": f"no such resource: {url.path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/v1/batches":
            self._post_batch()
        elif path == "/v1/_faults" and self.server.receiver.allow_faults:
            self._post_faults()
        else:
            if self._read_body() is not None:
                self._send_json(404, {"error": f"no such resource: {path}"})

    def _post_faults(self) -> None:
        raw = self._read_body()
        if raw is None or not self._authorised():
            return
        try:
            self.server.receiver.faults.set(validate.parse_json(raw))
        except (validate.BodyError, ValueError, TypeError) as exc:
            self._send_json(400, {"error": str(exc)})
            return
        log.info("receiver: fault plan set: %s", self.server.receiver.faults.pending())
        self._send_json(200, {"pending": self.server.receiver.faults.pending()})

    def _post_batch(self) -> None:
        receiver = self.server.receiver
        fault = receiver.faults.next() if receiver.allow_faults else None
        raw = self._read_body()
        if raw is None:
            return
        if fault is not None:
            log.info("receiver: injecting fault %s", fault.describe())
            if fault.delay_s and self.server.closing.wait(fault.delay_s):
                self._abort()  # shutting down: do not process after the delay
                return
            if fault.reset:
                self._abort()
                return
            if fault.status is not None:
                headers = {}
                retry_after = fault.retry_after_header()
                if retry_after is not None:
                    headers["Retry-After"] = retry_after
                self._send_json(fault.status, {"error": f"injected fault: {fault.status}"}, headers)
                return
        caller = self._caller()
        if caller is None:
            return
        try:
            batch = validate.read_batch(
                raw, self.headers.get("Content-Encoding"), receiver.max_body, self.headers.get("Idempotency-Key")
            )
        except validate.BodyError as exc:
            log.warning("receiver: %d from %s: %s %s", exc.status, self.address_string(), exc, exc.problems[:3])
            self._send_json(exc.status, exc.as_json())
            return
        except Exception as exc:  # noqa: BLE001 - a validator's bug: a 500 and one line, not a dropped connection
            log.error("receiver: 500 for a batch from %s: %s: %s", self.address_string(), type(exc).__name__,
                      str(exc)[:300])
            self.close_connection = True
            self._send_json(500, {"error": f"internal error: {type(exc).__name__}"})
            return
        if caller != "*" and batch.gateway_id != caller:
            log.warning("receiver: 403 from %s: a batch for %r with %r's token", self.address_string(),
                        batch.gateway_id, caller)
            self._send_json(403, {"error": f"this token is not gateway {batch.gateway_id!r}'s"})
            return

        def store() -> None:
            result = receiver.store_batch(batch)  # committed before anything is answered
            if fault is not None and fault.exit_after_store:
                log.warning("receiver: injected fault: exiting after the commit, before answering")
                os._exit(70)
            if fault is not None and fault.drop_response:
                self._abort()
                return
            self._send_json(200, result)

        self._guarded(store)

    def _guarded(self, work: Any) -> None:
        """Run ``work``; the database's refusal is a 503 (retried), anything else a 500, each with one log line."""
        try:
            work()
        except StorageUnavailable as exc:
            log.warning("receiver: 503: %s", exc)
            self._send_json(503, {"error": f"storage unavailable: {exc}"}, {"Retry-After": "5"})
        except ReceiverError as exc:
            log.error("receiver: 500: %s", exc)
            self._send_json(500, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a bug must not drop the connection mid-answer
            log.error("receiver: 500 for %s %s: %s: %s", self.command, self.path, type(exc).__name__, str(exc)[:300])
            log.debug("receiver: the 500's traceback", exc_info=True)
            self.close_connection = True
            self._send_json(500, {"error": f"internal error: {type(exc).__name__}"})
