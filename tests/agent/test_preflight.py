"""Preflight (issue 9 items 9, 14; issue 10 item 10): what the agent would refuse at run time
is found by ``config check`` first, and ``coldgate run`` exits 78 on it instead of a crash
loop or a traceback at every retry."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import config
from agent.cli import main


def cfg(tmp_path: Path, extra: str = "", store: str | None = None) -> config.Config:
    store_path = store if store is not None else str(tmp_path / "data" / "store.db")
    return config.loads(f'gateway_id = "gw"\n[store]\npath = "{store_path}"\n{extra}')


def paths(problems: list[config.ConfigProblem]) -> dict[str, str]:
    return {p.path: str(p) for p in problems}


def test_a_plain_config_on_a_ready_machine_has_no_problems(tmp_path):
    assert config.preflight(cfg(tmp_path)) == []  # the store's folder is created at start


# -- the store path (issue 9 item 9: exit 1 at every start, "File exists") ---------------


def test_a_store_path_that_is_a_directory_is_a_problem(tmp_path):
    (tmp_path / "store.db").mkdir()
    found = paths(config.preflight(cfg(tmp_path, store=str(tmp_path / "store.db"))))
    assert "is a directory" in found["store.path"]


def test_a_store_path_under_a_regular_file_is_a_problem(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    found = paths(config.preflight(cfg(tmp_path, store=str(tmp_path / "data" / "sub" / "store.db"))))
    assert "which is a file, not a directory" in found["store.path"]


def test_a_store_file_of_mode_000_is_a_problem_with_the_fix(tmp_path):
    db = tmp_path / "store.db"
    db.write_bytes(b"")
    db.chmod(0)
    found = paths(config.preflight(cfg(tmp_path, store=str(db))))
    assert "cannot be read and written" in found["store.path"] and "chmod 600" in found["store.path"]


def test_a_store_side_file_that_is_not_a_regular_file_is_a_problem(tmp_path):
    db = tmp_path / "store.db"
    (tmp_path / "store.db-wal").mkdir()
    assert "store.db-wal is not a regular file" in paths(config.preflight(cfg(tmp_path, store=str(db))))["store.path"]


# -- the token file --------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "expected"), [
    (None, "does not exist"),
    ((b"abc\n", 0o644), "readable by others"),
    ((b"\n", 0o600), "is empty"),
])
def test_the_token_file_must_exist_be_private_and_hold_a_token(tmp_path, setup, expected):
    token = tmp_path / "token"
    if setup is not None:
        token.write_bytes(setup[0])
        token.chmod(setup[1])
    found = paths(config.preflight(cfg(tmp_path, f'[uplink]\nurl = "https://h.example"\ntoken_file = "{token}"\n')))
    assert expected in found["uplink.token_file"]


# -- certificates and keys (issue 9 item 14: a traceback at every retry) ---------------


def make_identity(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o640)
    return cert_path, key_path


def tls(cert: Path, key: Path, ca: Path | None = None) -> str:
    text = f'[uplink]\nurl = "https://h.example"\nclient_cert = "{cert}"\nclient_key = "{key}"\n'
    return text + (f'ca_bundle = "{ca}"\n' if ca else "")


def test_good_client_certificate_key_and_ca_pass(tmp_path):
    cert, key = make_identity(tmp_path, "gw")
    assert config.preflight(cfg(tmp_path, tls(cert, key, ca=cert))) == []


def test_a_missing_client_certificate_is_found_before_the_first_request(tmp_path):
    _, key = make_identity(tmp_path, "gw")
    found = paths(config.preflight(cfg(tmp_path, tls(tmp_path / "gone.crt", key))))
    assert "gone.crt does not exist" in found["uplink.client_cert"]


def test_files_that_are_not_pem_or_do_not_belong_together_are_problems(tmp_path):
    cert, key = make_identity(tmp_path, "gw")
    other_cert, _ = make_identity(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    junk.chmod(0o600)
    assert "holds no PEM certificate" in paths(config.preflight(cfg(tmp_path, tls(junk, key))))["uplink.client_cert"]
    assert "holds no PEM private key" in paths(config.preflight(cfg(tmp_path, tls(cert, junk))))["uplink.client_key"]
    assert "holds no PEM certificate" in paths(config.preflight(cfg(tmp_path, tls(cert, key, ca=junk))))[
        "uplink.ca_bundle"]
    mismatch = paths(config.preflight(cfg(tmp_path, tls(other_cert, key))))
    assert "is not the key of the certificate" in mismatch["uplink.client_key"]


def test_an_encrypted_or_world_readable_client_key_is_a_problem(tmp_path):
    cert, key = make_identity(tmp_path, "gw")
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"pass")))
    assert "is encrypted" in paths(config.preflight(cfg(tmp_path, tls(cert, key))))["uplink.client_key"]
    key.chmod(0o644)
    assert "readable by others" in paths(config.preflight(cfg(tmp_path, tls(cert, key))))["uplink.client_key"]


# -- the alarm action's allow-list -------------------------------------------------------


def test_an_action_program_not_in_the_allow_list_is_refused_with_the_reason(tmp_path):
    prog = tmp_path / "buzz"
    prog.write_text("#!/bin/sh\ntrue\n")
    prog.chmod(0o755)
    allow = tmp_path / "actions.allow"
    allow.write_text(f"{prog}\n")
    action = f'[rules.action]\ncommand = ["{prog}", "--long"]\n'
    assert config.preflight(cfg(tmp_path, action), allow_list=allow, trusted_uid=os.getuid()) == []
    other = '[rules.action]\ncommand = ["/usr/bin/curl", "http://x"]\n'
    found = paths(config.preflight(cfg(tmp_path, other), allow_list=allow, trusted_uid=os.getuid()))
    assert "/usr/bin/curl is not listed in" in found["rules.action.command"]
    missing = paths(config.preflight(cfg(tmp_path, action), allow_list=tmp_path / "none", trusted_uid=os.getuid()))
    assert "does not exist" in missing["rules.action.command"]


# -- the commands ------------------------------------------------------------------------


def test_config_check_reports_what_run_would_refuse_and_run_exits_78(tmp_path, capsys):
    _, key = make_identity(tmp_path, "gw")
    f = tmp_path / "c.toml"
    f.write_text(f'gateway_id = "gw"\n[store]\npath = "{tmp_path}/s.db"\n' + tls(tmp_path / "gone.crt", key))
    assert main(["config", "check", str(f)]) == 1
    out = capsys.readouterr().out
    assert "uplink.client_cert" in out and "gone.crt does not exist" in out
    assert main(["config", "check", "--json", str(f)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False and data["problems"][0]["path"] == "uplink.client_cert"
    assert main(["config", "check", "--schema-only", str(f)]) == 0
    assert "checked the file alone" in capsys.readouterr().out
    assert main(["run", "--config", str(f)]) == 78
    err = capsys.readouterr().err
    assert "gone.crt does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "s.db").exists()  # refused before anything started


def test_config_apply_refuses_a_file_whose_machine_checks_fail(tmp_path, capsys):
    live = tmp_path / "live.toml"
    live.write_text('gateway_id = "gw"\n')
    new = tmp_path / "new.toml"
    (tmp_path / "dir.db").mkdir()
    new.write_text(f'gateway_id = "gw"\n[store]\npath = "{tmp_path}/dir.db"\n')
    assert main(["config", "apply", str(new), "--config", str(live)]) == 1
    assert "is a directory" in capsys.readouterr().out
    assert live.read_text() == 'gateway_id = "gw"\n'


@pytest.mark.parametrize(("make", "expected"), [
    ("directory", "store.db is a directory"),
    ("under_a_file", "which is a file, not a directory"),
    ("mode_000", "cannot be read and written by this user (mode 0000)"),
])
def test_run_on_a_store_path_it_cannot_use_exits_78_with_the_reason_and_starts_nothing(tmp_path, make, expected):
    """Issue 9 item 9: exit 1 at every start with a misleading "File exists" (a crash loop);
    78 is the status the unit does not restart on. The real process, as systemd starts it."""
    import subprocess
    import sys

    store = tmp_path / "store.db"
    if make == "directory":
        store.mkdir()
    elif make == "under_a_file":
        (tmp_path / "data").write_text("not a folder")
        store = tmp_path / "data" / "store.db"
    else:
        store.write_bytes(b"")
        store.chmod(0)
    f = tmp_path / "c.toml"
    f.write_text(f'gateway_id = "gw"\n[store]\npath = "{store}"\n[control]\nsocket = "{tmp_path}/control.sock"\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    out = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(f)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 78, out.stderr
    assert "store.path" in out.stderr and expected in out.stderr
    assert "Traceback" not in out.stderr and "File exists" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no lock, no socket, no store
