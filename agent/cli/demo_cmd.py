"""``coldgate demo``: the reference receiver and the agent on the bundled demo, live.

Starts ``coldgate receiver`` and ``coldgate run --config config/demo.toml`` as two
processes, prints what flows every few seconds (sensor values, store depth, what the
receiver holds and whether its chain verifies, alarms), and on Ctrl-C stops both
cleanly, sends what is left and prints the receiver's verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG = "config/demo.toml"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the reference receiver and the agent on the bundled demo (simulated loggers)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"demo config (default: {DEFAULT_CONFIG})")
    p.add_argument("--seconds", type=float, default=None, help="stop by itself after this long (default: Ctrl-C)")
    p.add_argument("--every", type=float, default=3.0, help="seconds between progress lines")
    p.add_argument("--fresh", action="store_true", help="start from empty databases")
    p.add_argument("--json", action="store_true",
                   help="progress as one JSON object a line, and the final report as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent import config

    cfg_path = Path(args.config)
    if not cfg_path.exists():
        print(f"coldgate: {cfg_path} not found (run the demo from the coldgate checkout)", file=sys.stderr)
        return 1
    cfg = config.load(cfg_path)
    data_dir = cfg.store.path.parent
    data_dir.mkdir(parents=True, exist_ok=True)
    rx_db = data_dir / "receiver.db"
    if args.fresh:
        for f in data_dir.glob("*"):
            if f.is_file():
                f.unlink()
    url = urlsplit(cfg.uplink.url or "http://127.0.0.1:8765")
    host, port = url.hostname or "127.0.0.1", url.port or 80
    busy = _port_in_use(host, port)
    if busy:
        print(f"coldgate: {host}:{port} is already in use ({busy}); stop whatever holds it "
              f"(another demo?) or change [uplink] url in {cfg_path}", file=sys.stderr)
        return 1
    token = cfg.uplink.token.get_secret_value() if cfg.uplink.token else None
    rx_cmd = [sys.executable, "-m", "agent", "receiver", "--host", url.hostname or "127.0.0.1",
              "--port", str(url.port or 80), "--db", str(rx_db)] + (["--token", token] if token else [])
    agent_cmd = [sys.executable, "-m", "agent", "run", "--config", str(cfg_path)]
    log_file = open(data_dir / "demo.log", "ab")  # noqa: SIM115 - closed in finally
    print(f"coldgate demo: receiver on {url.geturl()} (db {rx_db}), agent on {cfg_path} "
          f"(store {cfg.store.path}); logs in {data_dir / 'demo.log'}; Ctrl-C stops both",
          file=sys.stderr if args.json else sys.stdout)  # --json: stdout carries JSON only
    receiver = subprocess.Popen(rx_cmd, stdout=log_file, stderr=log_file, start_new_session=True)
    agent = None
    shipment = None
    start = time.monotonic()
    interrupted = False
    # SIGTERM to the demo alone stops both children, as Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _wait_for_port(host, port, receiver)
        agent = subprocess.Popen(agent_cmd, stdout=log_file, stderr=log_file, start_new_session=True)
        shipment = _start_shipment(cfg, agent)
        if not args.json:
            print(f"shipment {shipment} started: probes 1-3, a 2 h stability budget above 8 °C; "
                  "its trip report is written when the demo stops", flush=True)
        while args.seconds is None or time.monotonic() - start < args.seconds:
            time.sleep(args.every)
            if agent.poll() is not None:
                print(f"agent exited with {agent.returncode}; see {data_dir / 'demo.log'}", file=sys.stderr)
                return 1
            text, data = _progress(time.monotonic() - start, cfg, rx_db)
            print(json.dumps(data) if args.json else text, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\nstopping…", file=sys.stderr if args.json else sys.stdout)  # --json: stdout is JSON only
    finally:
        signal.signal(signal.SIGTERM, previous)
        if shipment:
            _stop_shipment(cfg, shipment)
        code = _stop(agent)
        if agent is not None and code == 0:
            # send what the agent committed on its way out
            subprocess.run([sys.executable, "-m", "agent", "sync", "--now", "--config", str(cfg_path)],
                           stdout=subprocess.DEVNULL, stderr=log_file, check=False)
        _stop(receiver)
        log_file.close()
    written, failed = _report(cfg_path, shipment, data_dir) if shipment else ([], [])
    if args.json:
        print(json.dumps({"receiver": _receiver_report(rx_db, cfg), "shipment": shipment, "trip_report": written,
                          "trip_report_not_written": failed}))
    else:
        print(_final(rx_db, cfg))
        if shipment:
            _say_report(shipment, written, failed)
    return 130 if interrupted else 0


def _start_shipment(cfg: Any, agent: subprocess.Popen[bytes]) -> str | None:
    """A shipment of this run's own (an id is used once), started once the agent answers."""
    from agent.control import ControlClient
    from agent.exc import AgentNotRunning, ControlError

    sid = time.strftime("SHP-DEMO-%Y%m%dT%H%M%S", time.gmtime())
    spec = {"id": sid, "sensors": ["probe-1", "probe-2", "probe-3"], "profile": "demo-2-8C", "ignore_s": 10,
            "planned_duration_s": 3600, "custodian": "Demo Pharma, Basel", "product": "Vaccine X, lot 42",
            "origin": "Basel", "destination": "Frankfurt",
            "legs": [{"name": "packing", "kind": "origin", "mode": "road"},
                     {"name": "road to FRA", "kind": "transit", "mode": "road"}],
            "stability": {"budget_s": 7200, "above": 8.0, "spent_upstream_s": 600}}
    client = ControlClient(cfg.control.socket, timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and agent.poll() is None:
        try:
            client.request("shipment", action="start", spec=spec, by="demo")
            client.request("shipment", action="leg", shipment=sid, by="demo")
            return sid
        except AgentNotRunning:
            time.sleep(0.2)  # the agent is starting: its socket is not there yet
        except ControlError as exc:
            print(f"coldgate demo: the shipment could not start: {exc}", file=sys.stderr)
            return None
    return None


def _stop_shipment(cfg: Any, sid: str) -> None:
    from agent.control import ControlClient
    from agent.exc import ControlError

    client = ControlClient(cfg.control.socket, timeout=10)
    with contextlib.suppress(ControlError):
        handover: dict[str, Any] = {"action": "handover", "shipment": sid, "from": "Demo Pharma, Basel",
                                    "to": "Frankfurt Clinic", "signed_by": "demo", "note": "delivered"}
        client.request("shipment", **handover)
        client.request("shipment", action="stop", shipment=sid, by="demo")


def _report(cfg_path: Path, sid: str, data_dir: Path) -> tuple[list[str], list[str]]:
    """Write the trip report beside the demo's data; the PDF when its extra is installed.

    Returns the files written and, for each one that was not, what and why (``coldgate
    report`` says why on stderr, exit code 1).
    """
    import importlib.util

    written: list[str] = []
    failed: list[str] = []
    base = [sys.executable, "-m", "agent", "report", sid, "--config", str(cfg_path)]
    outputs = [("HTML", "--html", data_dir / f"{sid}.html")]
    if importlib.util.find_spec("fpdf") is not None:
        outputs.append(("PDF", "--pdf", data_dir / f"{sid}.pdf"))
    else:
        failed.append("PDF: the PDF report needs the 'report' extra: pip install 'coldgate[report]'")
    for kind, flag, path in outputs:
        done = subprocess.run([*base, flag, str(path)], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            written.append(str(path))
            continue
        said = [line for line in done.stderr.splitlines() if line.strip()]
        why = said[-1].removeprefix("coldgate: ") if said else f"coldgate report exited with {done.returncode}"
        failed.append(f"{kind} {path}: {why}")
    return written, failed


def _say_report(sid: str, written: list[str], failed: list[str]) -> None:
    """Where the trip report is; what could not be written, and why, on stderr."""
    if written:
        print(f"trip report of {sid}: {' and '.join(written)}")
    for f in failed:
        print(f"coldgate demo: the trip report of {sid} could not be written: {f}", file=sys.stderr)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be had, or None when it is free."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode} (port {port} in use?)")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise SystemExit("receiver did not start")


def _stop(proc: subprocess.Popen[bytes] | None) -> int:
    if proc is None:
        return 0
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _progress(elapsed: float, cfg: Any, rx_db: Path) -> tuple[str, dict[str, Any]]:
    from agent.control import ControlClient
    from agent.exc import ControlError

    try:
        st = ControlClient(cfg.control.socket, timeout=5.0).request("status")
    except ControlError:
        return f"[{elapsed:5.0f} s] agent starting…", {"elapsed_s": round(elapsed, 1), "agent": "starting"}
    temps = []
    for sid, s in sorted(st.get("sensors", {}).items()):
        t = s.get("readings", {}).get("temperature")
        if t:
            temps.append(f"{sid} {t['value']:.2f} °C")
    store = st.get("store", {})
    held = _receiver_summary(rx_db)
    alarms = [f"{a.get('rule')}@{a.get('sensor_id')}" for a in st.get("alarms", []) if a.get("state") == "raised"]
    line = (f"[{elapsed:5.0f} s] {'  '.join(temps)} | store seq {store.get('head_seq')}, "
            f"unsent {store.get('pending')} | receiver {held}")
    if alarms:
        line += f" | ALARMS: {', '.join(alarms)}"
    data = {"elapsed_s": round(elapsed, 1), "temperatures": {sid: s.get("readings", {}).get("temperature", {}).get(
        "value") for sid, s in st.get("sensors", {}).items()}, "store_head_seq": store.get("head_seq"),
        "unsent": store.get("pending"), "receiver": held, "alarms": alarms,
        "shipments": st.get("shipments", [])}
    return line, data


def _receiver_summary(rx_db: Path) -> str:
    from agent.receiver import Receiver

    if not rx_db.exists():
        return "empty"
    with Receiver(rx_db) as rx:
        report = rx.report()
    parts = []
    for gw in report["gateways"].values():
        for stream in gw["streams"].values():
            parts.append(f"{stream['records']} records, {stream['verdict']}")
    return "; ".join(parts) or "empty"


def _receiver_report(rx_db: Path, cfg: Any) -> dict[str, Any] | None:
    from agent.receiver import Receiver

    if not rx_db.exists():
        return None
    with Receiver(rx_db) as rx:
        return dict(rx.report(cfg.gateway_id))


def _final(rx_db: Path, cfg: Any) -> str:
    from agent.receiver import Receiver, render_text

    if not rx_db.exists():
        return "the receiver holds nothing yet"
    with Receiver(rx_db) as rx:
        report = rx.report(cfg.gateway_id)
    return "receiver report:\n" + render_text(report)
