"""The HTTP transport: one batch, one ``POST {uplink.url}/v1/batches`` (docs/protocol.md).

Every answer and every failure of ``requests`` is translated here, once, into an
:class:`~agent.uplink.base.Answer` or a :class:`~agent.exc.SyncError` (see
:mod:`agent.uplink.base`). Only a 2xx that carries the protocol's ``{"stored",
"duplicates"}`` answer acknowledges a batch: a captive portal's 200 page does not.
Redirects are never followed. TLS is verified (a configured CA bundle wins over
``REQUESTS_CA_BUNDLE``), with mutual TLS when a client certificate is configured.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import time

import requests

from agent import __version__
from agent.config import UplinkConfig
from agent.exc import AuthRefused, SyncRejected, SyncTooLarge, SyncTransient
from agent.protocol import frame_batch
from agent.secretfile import check_secret_file
from agent.timebase import rfc3339
from agent.uplink.base import Answer, Batch

GZIP_OVER = 1024


def frame(batch: Batch, sent_at: float) -> bytes:
    """The request body (docs/protocol.md): the records exactly as chained, ``hash`` spliced in."""
    return frame_batch(batch.gateway_id, batch.records, sent_at=rfc3339(sent_at), config=batch.config)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpTransport:
    """One HTTP session to the central endpoint (keep-alive across batches)."""

    def __init__(self, config: UplinkConfig) -> None:
        assert config.url is not None
        self.config = config
        self.url = f"{config.url}/v1/batches"
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"coldgate/{__version__}"
        # The environment is read once, here, not on every request: requests would look up
        # proxies and ~/.netrc for each one (milliseconds of CPU a batch on a Pi). A proxy
        # set in the environment (HTTPS_PROXY, NO_PROXY) still applies.
        self._proxies = requests.utils.get_environ_proxies(self.url)
        self.session.trust_env = False
        token = None
        if config.token is not None:
            token = config.token.get_secret_value()
        elif config.token_file is not None:
            token = check_secret_file(config.token_file, "uplink.token_file")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # Passed with every request, not set on the session: requests lets REQUESTS_CA_BUNDLE
        # and CURL_CA_BUNDLE override a session's verify, and the configured CA must win.
        self._verify: bool | str = True
        if not config.verify_tls:
            self._verify = False
        elif config.ca_bundle is not None:
            self._verify = str(config.ca_bundle)
        self._cert: tuple[str, str] | None = None
        if config.client_cert is not None and config.client_key is not None:
            self._cert = (str(config.client_cert), str(config.client_key))

    def close(self) -> None:
        self.session.close()

    def send(self, batch: Batch) -> Answer:
        payload = frame(batch, time.time())
        headers = {"Content-Type": "application/json", "Idempotency-Key": batch.key}
        if len(payload) > GZIP_OVER:
            payload = gzip.compress(payload, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        cfg = self.config
        try:
            resp = self.session.post(self.url, data=payload, headers=headers, verify=self._verify, cert=self._cert,
                                     proxies=self._proxies, allow_redirects=False,
                                     timeout=(cfg.connect_timeout_s, cfg.read_timeout_s))
        except requests.exceptions.SSLError as exc:
            raise SyncTransient(f"TLS failure talking to {cfg.masked_url()}: {_tls_reason(exc)}") from exc
        except requests.exceptions.Timeout as exc:
            raise SyncTransient(f"timeout after {cfg.read_timeout_s:g} s") from exc
        except requests.exceptions.ConnectionError as exc:
            raise SyncTransient(f"cannot reach {cfg.masked_url()}: {_root_cause(exc)}") from exc
        except requests.exceptions.RequestException as exc:
            raise SyncTransient(f"network error: {type(exc).__name__}: {_root_cause(exc)}") from exc
        except OSError as exc:  # requests checks the client certificate's files itself
            raise SyncTransient(f"TLS client certificate or key not usable: {exc.strerror or exc}") from exc
        status = resp.status_code
        text = resp.text[:300]
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        location = resp.headers.get("Location", "?")
        resp.close()
        first, last = batch.first, batch.last
        if 200 <= status < 300:
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            if not (isinstance(answer, dict) and type(answer.get("stored")) is int
                    and type(answer.get("duplicates")) is int):
                raise SyncTransient(f"HTTP {status} without the protocol's answer ({text[:80]!r}): not acknowledged",
                                    status=status)
            conflicts = answer.get("conflicts", 0)
            return Answer(answer["stored"], answer["duplicates"], conflicts if type(conflicts) is int else 0,
                          {k: v for k, v in answer.items() if k not in ("stored", "duplicates", "conflicts")})
        if 300 <= status < 400:
            raise SyncTransient(f"HTTP {status}: uplink.url redirects to {location}; set it to the final URL",
                                status=status)
        if status in (400, 422):
            raise SyncRejected(f"server rejected batch {first}-{last}: HTTP {status}: {text}", status=status)
        if status in (401, 403):
            raise AuthRefused(f"credentials refused: HTTP {status}", status=status)
        if status == 413:
            raise SyncTooLarge(f"batch {first}-{last} too large: HTTP 413", status=413)
        raise SyncTransient(f"HTTP {status}: {text}", status=status, retry_after=retry_after)


def _tls_reason(exc: BaseException) -> str:
    """The TLS library's own words ("certificate verify failed: …"), without the wrapping."""
    text = str(exc)
    for marker in ("certificate verify failed", "SSLV3_ALERT", "TLSV1_ALERT", "alert", "wrong version number"):
        i = text.find(marker)
        if i >= 0:
            return text[i:].split(" (_ssl.c")[0].rstrip("')\"")
    return _root_cause(exc)


def _root_cause(exc: BaseException) -> str:
    """The innermost cause, said plainly ("[Errno 111] Connection refused")."""
    seen = exc
    while True:
        nxt = seen.__cause__ or seen.__context__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror if seen.errno is None else f"{seen.strerror} (errno {seen.errno})"
    text = str(seen)
    if "Connection refused" in str(exc):
        return "connection refused"
    if "Name or service not known" in str(exc) or "Failed to resolve" in str(exc):
        return "host name not found"
    if "RemoteDisconnected" in str(exc) or "Connection aborted" in str(exc):
        return "connection closed by the server without a response"
    return text[:200]
