"""A running agent's Prometheus metrics (scraped over real HTTP, parsed by
``prometheus_client``'s parser; off unless configured, on loopback only) and its signed
chain checkpoints."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from agent import config as configmod
from agent.cli import main
from agent.daemon import Agent
from agent.exc import ConfigError
from agent.identity import key_id, load_public, verify_checkpoint
from agent.uplink.fake import FakeTransport
from tests.agent.test_daemon import ask, events, poll, records, start

BASE = """
gateway_id = "gw-metrics"
config_version = "2025.6.1"
[store]
path = "store.db"
commit_interval_s = 0.05
[control]
socket = "control.sock"
[time]
sync_source = "assume_synced"
[recording]
record_interval_s = 0
[[drivers]]
name = "sim"
type = "sim"
seed = 1
sensors = [{ id = "p1", interval_s = 0.05 }, { id = "p2", interval_s = 0.1 }]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_listeners(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on: its socket inodes looked up in /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue  # no IPv6
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def test_metrics_scraped_over_http_parse_and_their_counters_move_as_readings_flow(tmp_path: Path) -> None:
    port = free_port()
    textfile = tmp_path / "node" / "coldgate.prom"
    textfile.parent.mkdir()
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(BASE + f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{textfile}"\n'
                               "textfile_interval_s = 5\n")
    transport = FakeTransport()
    url = f"http://127.0.0.1:{port}/metrics"

    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        resp = await asyncio.to_thread(requests.get, url, timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return samples(resp.text)

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, transport=lambda: transport)
        task = await start(agent)
        await poll(lambda: len(records(tmp_path / "store.db", type="reading")) > 10)
        first = await scrape()
        n1 = value(first, "coldgate_readings_total", driver="sim", sensor="p1")
        c1 = value(first, "coldgate_records_committed_total")
        await poll(lambda: len(records(tmp_path / "store.db", type="reading")) > 60)
        await poll(lambda: transport.batches)
        second = await scrape()
        assert value(second, "coldgate_readings_total", driver="sim", sensor="p1") > n1 > 0
        assert value(second, "coldgate_readings_total", driver="sim", sensor="p2") > 0
        assert value(second, "coldgate_records_committed_total") > c1
        assert value(second, "coldgate_up") == 1
        assert value(second, "coldgate_driver_up", driver="sim", type="sim") == 1
        assert value(second, "coldgate_uplink_batches_total", answer="ok") >= 1
        assert value(second, "coldgate_uplink_state", state="transient") == 0
        assert value(second, "coldgate_clock_synced") == 1
        assert value(second, "coldgate_store_quota_bytes") == 512 * 2**20
        assert value(second, "coldgate_store_disk_bytes") > 0
        assert value(second, "coldgate_alarms_active", severity="alarm") == 0
        status = await ask(agent, "status")
        sha = status["fleet"]["running"]["sha256"]
        assert value(second, "coldgate_config_info", version="2025.6.1", sha256=sha, signer="") == 1
        assert value(second, "coldgate_config_version") == 2025
        assert value(second, "coldgate_events_total", event="config_applied") >= 1
        assert ("coldgate_build_info", (("python", __import__("platform").python_version()),
                                        ("version", __import__("agent").__version__))) in second
        assert any(k[0] == "process_resident_memory_bytes" for k in second)
        # the textfile for node_exporter, written at once and then every interval
        await poll(lambda: textfile.exists())
        assert value(samples(textfile.read_text()), "coldgate_up") == 1
        agent.stop()
        assert await task == 0
        assert not textfile.exists()  # a stopped agent leaves no stale figures behind

    asyncio.run(scenario())


@pytest.mark.parametrize("section", ["", "[metrics]\ntextfile_interval_s = 60\n"],
                         ids=["no-metrics-section", "metrics-section-without-listen-or-textfile"])
def test_metrics_are_off_by_default_and_the_agent_then_opens_no_listener(tmp_path: Path, section: str) -> None:
    """Without ``listen`` (no [metrics] at all, or the section as config/gateway.toml ships
    it) the running agent listens on no TCP port; the same probe sees the port once
    ``listen`` is set, and sees it closed at the stop."""
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(BASE + section)
    cfg = configmod.load(cfg_path)
    assert cfg.metrics.listen is None and cfg.metrics.textfile is None
    store, pid, port = tmp_path / "store.db", os.getpid(), free_port()

    async def scenario() -> None:
        before = tcp_listeners(pid)
        agent = Agent(cfg, config_path=cfg_path, transport=FakeTransport)
        task = await start(agent)
        await poll(lambda: len(records(store, type="reading")) > 10)  # running, readings flowing
        assert tcp_listeners(pid) - before == set() and agent.metrics is None
        agent.stop()
        assert await task == 0
        cfg_path.write_text(BASE + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, transport=FakeTransport)
        task = await start(agent)
        assert tcp_listeners(pid) - before == {port}  # the probe does see a metrics listener
        agent.stop()
        assert await task == 0
        assert tcp_listeners(pid) - before == set()

    asyncio.run(scenario())


@pytest.mark.parametrize("listen", ["0.0.0.0:9108", "[::]:9108", "192.168.1.10:9108", "gateway.local:9108"])
def test_a_metrics_listen_address_off_loopback_is_refused_by_config_validation_saying_why(
        tmp_path: Path, listen: str, capsys: pytest.CaptureFixture[str]) -> None:
    why = ("the metrics endpoint has no authentication: listen on a loopback address (127.0.0.1, ::1) and let "
           "node_exporter's textfile or a proxy carry them further")
    text = BASE + f'[metrics]\nlisten = "{listen}"\n'
    with pytest.raises(ConfigError) as err:
        configmod.loads(text, source="c.toml")
    assert [(p.path, p.message) for p in err.value.problems] == [("metrics.listen", f"{why} (got {listen!r})")]
    f = tmp_path / "c.toml"
    f.write_text(text)
    assert main(["config", "check", "--schema-only", str(f)]) == 1
    assert f"  - metrics.listen: {why} (got {listen!r})" in capsys.readouterr().out
    for loopback in ("127.0.0.1:9108", "[::1]:9108", "localhost:9108"):  # what it takes instead
        assert configmod.loads(BASE + f'[metrics]\nlisten = "{loopback}"\n').metrics.listen == loopback


def test_data_loss_is_counted_by_reason_in_the_metrics(tmp_path: Path) -> None:
    """A value no record can carry (NaN) is a data_loss event; its count reaches the metrics."""
    from agent.metrics import AgentCollector

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(BASE)

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, transport=FakeTransport)
        task = await start(agent)
        from drivers.base import Reading

        agent.intake.put_readings("sim", [Reading("p1", "temperature", float("nan"), "Cel")])
        await poll(lambda: events(tmp_path / "store.db", "data_loss"))
        snap = await agent.metrics_snapshot()
        got: dict[str, Any] = {}
        for family in AgentCollector(lambda: snap).collect():
            for s in family.samples:
                got[(s.name, tuple(sorted(s.labels.items())))] = s.value
        assert got[("coldgate_data_loss_events_total", (("reason", "invalid_value"),))] == 1
        assert got[("coldgate_data_lost_readings_total", (("reason", "invalid_value"),))] == 1
        agent.stop()
        assert await task == 0

    asyncio.run(scenario())


def test_checkpoints_are_signed_cover_the_records_before_them_and_one_closes_every_stop(tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(BASE + "[identity]\ncheckpoint_interval_s = 0.2\n")
    store = tmp_path / "store.db"

    async def scenario() -> None:
        agent = Agent(configmod.load(cfg_path), config_path=cfg_path, transport=FakeTransport)
        task = await start(agent)
        await poll(lambda: len(events(store, "chain_checkpoint")) >= 3)
        status = await ask(agent, "status")
        agent.stop()
        assert await task == 0
        public = load_public(tmp_path / "identity.key")
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert status["identity"]["key_id"] == key_id(raw)
        every = records(store)
        by_seq = {r["seq"]: r for r in every}
        cps = [r for r in every if r["type"] == "event" and r["event"] == "chain_checkpoint"]
        stream = every[0]["stream"]
        for cp in cps:
            d = cp["details"]
            assert d["head_seq"] == cp["seq"] - 1  # records 1..N; the checkpoint itself is N+1
            assert d["head_hash"] == by_seq[d["head_seq"]]["hash"] == cp["prev_hash"]
            assert d["key_id"] == key_id(raw) and d["algorithm"] == "ed25519"
            assert verify_checkpoint(public, "gw-metrics", stream, d)
            assert "PRIVATE" not in str(cp)
        # the last record of the run is the checkpoint that signs its stop
        assert every[-1]["event"] == "chain_checkpoint" and every[-2]["event"] == "agent_stopped"
        forged = {**cps[0]["details"], "head_hash": "0" * 64}
        assert not verify_checkpoint(public, "gw-metrics", stream, forged)
        created = events(store, "identity_created")
        assert created and created[0]["details"]["key_id"] == key_id(raw)

    asyncio.run(scenario())
