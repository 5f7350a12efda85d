"""TLS on the uplink: verification on by default, a private CA bundle, mutual TLS.

A real HTTPS server on loopback (the reference receiver behind an ``ssl`` context) with
certificates made here by ``cryptography``: a private CA, a server certificate for
127.0.0.1 and a client certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import UplinkConfig
from agent.receiver import Receiver
from agent.store import Store
from tests.agent.uplink_helpers import drain


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          *, ca: bool = False, san_ip: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san_ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        kp = path.with_suffix(".key")
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        kp.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key, srv_key, cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("coldgate test CA", ca_key, "coldgate test CA", ca_key, ca=True)
    return {
        "ca": _write(d / "ca.pem", ca),
        "server": _write(d / "server.pem", _cert("127.0.0.1", srv_key, "coldgate test CA", ca_key,
                                                 san_ip="127.0.0.1"), srv_key),
        "client": _write(d / "client.pem", _cert("gw-tls", cli_key, "coldgate test CA", ca_key), cli_key),
    }


def _https_receiver(tmp_path: Path, pki: dict[str, Path], *, require_client_cert: bool) -> Iterator[str]:
    receiver = Receiver(tmp_path / "rx.db", token="t")
    server = receiver.make_server("127.0.0.1", 0)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server"], pki["server"].with_suffix(".key"))
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki["ca"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        receiver.close()


@pytest.fixture
def https(tmp_path: Path, pki: dict[str, Path]) -> Iterator[str]:
    yield from _https_receiver(tmp_path, pki, require_client_cert=False)


@pytest.fixture
def https_mtls(tmp_path: Path, pki: dict[str, Path]) -> Iterator[str]:
    yield from _https_receiver(tmp_path, pki, require_client_cert=True)


def _sync(tmp_path: Path, **uplink: object) -> tuple[str, int, str | None]:
    with Store.open(tmp_path / "store.db", gateway_id="gw-tls") as store:
        store.append([{"type": "reading", "ts": 1_790_000_000.0 + i, "time_quality": "synced", "sensor_id": "p",
                       "quantity": "temperature", "value": 5.0, "unit": "Cel"} for i in range(10)])
        state = drain(store, UplinkConfig(token="t", connect_timeout_s=2, read_timeout_s=5, **uplink), "gw-tls")
        return state.result, store.stats()["pending"], state.last_error


def test_tls_is_verified_by_default_and_an_unknown_ca_is_refused_with_nothing_lost(tmp_path: Path, https: str) -> None:
    result, pending, error = _sync(tmp_path, url=https)
    assert result == "transient" and pending == 11
    assert error is not None and "TLS" in error and "certificate verify failed" in error


def test_a_private_ca_bundle_lets_the_uplink_verify_the_server_whatever_the_environment_says(
        tmp_path: Path, https: str, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these override a session's CA; the configured bundle must win
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["server"]))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(pki["server"]))
    assert _sync(tmp_path, url=https, ca_bundle=pki["ca"]) == ("ok", 0, None)


def test_mutual_tls_needs_the_client_certificate(tmp_path: Path, https_mtls: str, pki: dict[str, Path]) -> None:
    result, pending, _ = _sync(tmp_path / "a", url=https_mtls, ca_bundle=pki["ca"])
    assert result == "transient" and pending == 11
    ok = _sync(tmp_path / "b", url=https_mtls, ca_bundle=pki["ca"], client_cert=pki["client"],
               client_key=pki["client"].with_suffix(".key"))
    assert ok == ("ok", 0, None)
