"""Mutual TLS on the receiver: a verified client certificate names its gateway, and only that one."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.receiver.conftest import Chain, body_of, key_of


def _cert(cn: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool = False, ip: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, cert: x509.Certificate, key: Any) -> tuple[str, str]:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp = path.with_suffix(".key")
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return str(path), str(kp)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, "test CA", ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out: dict[str, Any] = {"ca": str(tmp_path / "ca.pem")}
    for name, ip in (("server", True), ("gw-1", False), ("gw-2", False)):
        k = ec.generate_private_key(ec.SECP256R1())
        out[name] = _pem(tmp_path / f"{name}.pem", _cert("127.0.0.1" if ip else name, k, "test CA", ca_key, ip=ip), k)
    return out


@pytest.fixture
def mtls(serve: Any, pki: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    reg = tmp_path / "gateways.toml"
    reg.write_text('[gateways."gw-1"]\ncertificate_cn = "gw-1"\n[gateways."gw-2"]\ncertificate_cn = "gw-2"\n')
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki["server"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(pki["ca"])
    rx = serve(gateways=reg, tls=ctx, read_timeout=0.5)
    yield rx, f"https://127.0.0.1:{rx.server.server_address[1]}"


def _post(url: str, pki: dict[str, Any], cert: str | None, records: list[dict[str, Any]], gateway_id: str) -> Any:
    import json

    with requests.Session() as s:
        return s.post(f"{url}/v1/batches", data=json.dumps(body_of(records, gateway_id)), timeout=10,
                      verify=pki["ca"], cert=pki[cert] if cert else None,
                      headers={"Content-Type": "application/json", "Idempotency-Key": key_of(records, gateway_id)})


def test_a_client_certificate_names_its_gateway_and_cannot_write_another(mtls: Any, pki: dict[str, Any]) -> None:
    rx, url = mtls
    assert rx.server.url.startswith("https://")
    mine, theirs = Chain().readings(2), Chain().readings(2)
    assert _post(url, pki, "gw-1", mine, "gw-1").json()["stored"] == 2  # no token needed
    r = _post(url, pki, "gw-1", theirs, "gw-2")
    assert r.status_code == 403 and "gw-2" in r.json()["error"]
    assert _post(url, pki, "gw-2", theirs, "gw-2").json()["stored"] == 2  # its stream was left untouched
    with pytest.raises(requests.exceptions.SSLError):
        _post(url, pki, None, Chain().readings(1), "gw-1")  # no certificate: no handshake


def test_a_client_that_never_finishes_the_handshake_holds_neither_the_accept_loop_nor_its_thread(
    mtls: Any, pki: dict[str, Any]
) -> None:
    rx, url = mtls
    with socket.create_connection(("127.0.0.1", rx.server.server_address[1])) as stalled:
        assert _post(url, pki, "gw-1", Chain().readings(1), "gw-1").status_code == 200  # served meanwhile
        stalled.settimeout(5)
        assert stalled.recv(1) == b""  # closed by the server after the read timeout
