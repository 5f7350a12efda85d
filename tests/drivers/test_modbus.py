"""The Modbus RTU driver against pymodbus's own simulated devices, and its pure decoder.

The bus: pymodbus's server with the RTU framer on loopback TCP, reached by the driver as
``socket://`` (pyserial's URL handler, as a serial device server would be), through a
small fault-injecting proxy that can silence one slave or flip a byte of an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pymodbus import FramerType
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus import (
    EXCEPTION_NAMES,
    PROFILES,
    ModbusDriver,
    ModbusOptions,
    RegisterMap,
    decode_registers,
    plan_blocks,
)
from tests.drivers.serial_helpers import DATA, CollectingSink, Running, fast, wait_until

VECTORS = json.loads((DATA / "modbus/vectors.json").read_text())["modbus"]
FastModbus = fast(ModbusDriver)


# -- the manual's frames, through the framer the driver uses ---------------------------
# The driver leaves RTU framing and the CRC to pymodbus; these hold the manual's frames
# against that framer and our register decoding.


def rtu_decode(frame: bytes, *, request: bool = False):
    """The PDU pymodbus's RTU framer makes of one whole frame (None: no valid frame)."""
    _, pdu = FramerRTU(DecodePDU(request)).handleFrame(frame, 0, 0)
    return pdu


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_manual_frames_decode_to_the_documented_values(vector):
    exp = vector["expect"]
    resp = rtu_decode(bytes.fromhex(vector["response_hex"]))
    assert resp is not None
    assert (resp.dev_id, resp.function_code & 0x7F) == (exp["slave"], exp["function"])
    if exp.get("exception"):
        assert resp.function_code & 0x80 and resp.exception_code == exp["exception_code"]
        assert resp.exception_code in EXCEPTION_NAMES
        return
    assert resp.registers[0] == exp["raw"]
    readings = decode_registers(exp["register"], resp.registers, PROFILES["xy-md02"], "probe")
    assert [(r.quantity, r.value, r.unit) for r in readings] == [("temperature", exp["temperature_c"], "Cel")]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_request_frames_are_the_reads_the_manual_says(vector):
    req = rtu_decode(bytes.fromhex(vector["request_hex"]), request=True)
    assert req is not None
    assert (req.dev_id, req.function_code, req.count) == (vector["expect"]["slave"], 4, 1)


def test_a_flipped_bit_fails_the_crc_and_yields_no_frame():
    frame = bytearray(bytes.fromhex(VECTORS[0]["response_hex"]))
    frame[3] ^= 0x01
    assert rtu_decode(bytes(frame)) is None


def test_xy_md02_profile_reads_both_registers_in_one_request():
    assert [(b.function, b.start, b.count) for b in plan_blocks(PROFILES["xy-md02"])] == [(4, 1, 2)]
    out = decode_registers(1, [0xFF33, 456], PROFILES["xy-md02"], "p")
    assert [(r.quantity, r.value) for r in out] == [("temperature", -20.5), ("humidity", 45.6)]


@pytest.mark.parametrize(
    "words, order, signed, expected",
    [
        ([0x0001, 0x86A0], "big", False, 100_000),
        ([0x86A0, 0x0001], "little", False, 100_000),
        ([0xFFFF, 0xFFFE], "big", True, -2),
        ([0xFFFE, 0xFFFF], "little", True, -2),
        ([0xFFFF, 0xFFFE], "big", False, 0xFFFFFFFE),
    ],
)
def test_32_bit_values_follow_word_order_and_signedness(words, order, signed, expected):
    m = RegisterMap(quantity="pressure", unit="Pa", register=10, count=2, word_order=order, signed=signed)
    assert decode_registers(10, words, [m], "s")[0].value == expected


def test_scale_offset_and_not_available_values():
    m = RegisterMap(
        quantity="temperature", unit="Cel", register=0, signed=True, scale=0.01, offset=-1.0, invalid=[0x7FFF]
    )
    assert decode_registers(0, [2550], [m], "s")[0].value == pytest.approx(24.5)
    assert decode_registers(0, [0x7FFF], [m], "s") == []


def test_register_maps_are_validated_in_the_config():
    with pytest.raises(ValidationError):
        ModbusOptions.model_validate({"port": "loop://", "slaves": [{"sensor_id": "a"}]})  # no map
    with pytest.raises(ValidationError):
        ModbusOptions.model_validate(
            {
                "port": "loop://",
                "slaves": [{"sensor_id": "a", "profile": "xy-md02"}, {"sensor_id": "b", "profile": "xy-md02"}],
            }
        )  # same address
    with pytest.raises(ValidationError):
        ModbusOptions.model_validate(
            {
                "port": "loop://",
                "slaves": [
                    {"sensor_id": "a", "registers": [{"quantity": "t", "unit": "Cel", "register": 1, "function": 6}]}
                ],
            }
        )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), max_size=4), st.integers(0, 3))
def test_decode_registers_never_raises_on_short_or_odd_blocks(regs, start):
    maps = [*PROFILES["xy-md02"], RegisterMap(quantity="p", unit="Pa", register=2, count=2, signed=True)]
    for r in decode_registers(start, regs, maps, "s"):
        assert isinstance(r.value, float | int)


# -- the driver against pymodbus's simulated devices --------------------------------


def xy_md02(device_id: int, temp_raw: int, rh_raw: int) -> SimDevice:
    """An XY-MD02 as pymodbus simulates it: input registers 1 and 2 (0 is the device's own)."""
    bit = [SimData(0, values=False, datatype=DataType.BITS)]
    holding = [SimData(0, count=4, values=0, datatype=DataType.REGISTERS)]
    inputs = [SimData(0, values=[0, temp_raw & 0xFFFF, rh_raw], datatype=DataType.REGISTERS)]
    return SimDevice(device_id, simdata=(bit, bit, holding, inputs))


class FaultyBus:
    """A TCP proxy in front of the simulated bus: drops or corrupts answers on demand."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.muted: set[int] = set()  # slave addresses whose answers never arrive
        self.corrupt = 0  # how many of the next answers get a byte flipped
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.writers += [cw, uw]

        async def up() -> None:
            while data := await cr.read(256):
                uw.write(data)

        async def down() -> None:
            while data := await ur.read(256):
                if data[0] in self.muted:
                    continue
                if self.corrupt:
                    self.corrupt -= 1
                    data = data[:3] + bytes([data[3] ^ 0x40]) + data[4:]
                cw.write(data)

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(up(), down())
        for w in (cw, uw):
            w.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def simulated_bus(*devices: SimDevice) -> AsyncIterator[FaultyBus]:
    port = free_port()
    server = ModbusTcpServer(list(devices), framer=FramerType.RTU, address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever())
    await wait_until(lambda: server.transport is not None, what="modbus server listening")
    bus = FaultyBus(port)
    try:
        yield bus
    finally:
        with contextlib.suppress(AssertionError):
            await bus.stop()
        await server.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


def driver(port: int, **opts: object) -> ModbusDriver:
    slaves = [
        {"sensor_id": "fridge-1", "address": 1, "profile": "xy-md02"},
        {"sensor_id": "fridge-2", "address": 2, "profile": "xy-md02"},
    ]
    base = {
        "port": f"socket://127.0.0.1:{port}",
        "interval_s": 0.02,
        "timeout_s": 0.15,
        "retries": 1,
        "not_answering_after": 2,
        "slaves": slaves,
    }
    return FastModbus("rs485", ModbusOptions.model_validate({**base, **opts}))


def test_two_probes_on_one_bus_are_polled_with_signed_scaled_values():
    async def scenario():
        async with simulated_bus(xy_md02(1, 43, 612), xy_md02(2, -185, 305)) as bus:
            drv = driver(await bus.start())
            sink = CollectingSink()
            async with Running(sink, drv):
                await sink.wait_for(lambda: len(sink.of("fridge-2", "humidity")) >= 3)
        return sink, drv

    sink, drv = asyncio.run(scenario())
    assert set(sink.of("fridge-1", "temperature")) == {4.3}
    assert set(sink.of("fridge-1", "humidity")) == {61.2}
    assert set(sink.of("fridge-2", "temperature")) == {-18.5}
    assert {r.unit for r in sink.readings} == {"Cel", "%RH"}
    assert drv.status.details["slaves"]["fridge-1"]["state"] == "ok"
    assert drv.status.counters["timeouts"] == drv.status.counters["crc_errors"] == 0


def test_a_slave_that_stops_answering_is_reported_while_the_other_keeps_being_read():
    async def scenario():
        async with simulated_bus(xy_md02(1, 43, 612), xy_md02(2, -185, 305)) as bus:
            drv = driver(await bus.start())
            sink = CollectingSink()
            slaves = drv.status.details["slaves"]
            async with Running(sink, drv):
                await sink.wait_for(lambda: len(sink.of("fridge-2", "temperature")) >= 1)
                bus.muted.add(2)  # fridge-2's probe goes silent
                await wait_until(lambda: slaves["fridge-2"]["state"] == "not_answering", what="reported")
                n1, n2 = len(sink.of("fridge-1", "temperature")), len(sink.of("fridge-2", "temperature"))
                await sink.wait_for(lambda: len(sink.of("fridge-1", "temperature")) >= n1 + 5)
                assert len(sink.of("fridge-2", "temperature")) == n2
                bus.muted.clear()  # ... and comes back
                await wait_until(lambda: slaves["fridge-2"]["state"] == "ok", what="answering again")
                await sink.wait_for(lambda: len(sink.of("fridge-2", "temperature")) > n2)
        return sink, drv

    sink, drv = asyncio.run(scenario())
    assert drv.status.counters["timeouts"] >= 2
    assert "driver_error" not in sink.event_names()  # a silent slave is not a bus failure
    assert drv.status.details["slaves"]["fridge-1"]["failed_polls"] == 0


def test_exception_responses_are_counted_and_do_not_stop_other_slaves():
    async def scenario():
        async with simulated_bus(xy_md02(1, 43, 612), xy_md02(3, 0, 0)) as bus:
            drv = driver(
                await bus.start(),
                slaves=[
                    {"sensor_id": "fridge-1", "address": 1, "profile": "xy-md02"},
                    # register 40 does not exist on this device: ILLEGAL DATA ADDRESS every poll
                    {
                        "sensor_id": "wrong-map",
                        "address": 3,
                        "registers": [{"quantity": "temperature", "unit": "Cel", "register": 40}],
                    },
                ],
            )
            sink = CollectingSink()
            async with Running(sink, drv):
                await sink.wait_for(lambda: len(sink.of("fridge-1", "temperature")) >= 3)
                await wait_until(lambda: drv.status.counters["exceptions"] >= 3, what="exceptions counted")
        return sink, drv

    sink, drv = asyncio.run(scenario())
    assert sink.of("wrong-map", "temperature") == []
    wrong = drv.status.details["slaves"]["wrong-map"]
    assert wrong["state"] == "errors" and "exception response 2" in wrong["last_error"]
    assert drv.status.counters["timeouts"] == 0
    assert "driver_error" not in sink.event_names()


def test_a_corrupted_answer_is_counted_as_a_crc_error_and_retried():
    async def scenario():
        async with simulated_bus(xy_md02(1, 43, 612), xy_md02(2, -185, 305)) as bus:
            drv = driver(await bus.start())
            sink = CollectingSink()
            async with Running(sink, drv):
                await sink.wait_for(lambda: len(sink.of("fridge-1", "temperature")) >= 1)
                n = len(sink.readings)
                bus.corrupt = 1
                await wait_until(lambda: drv.status.counters["crc_errors"] == 1, what="crc error counted")
                await sink.wait_for(lambda: len(sink.readings) >= n + 8)
        return sink, drv

    sink, drv = asyncio.run(scenario())
    assert drv.status.counters["retried_ok"] >= 1
    # the corrupted value was never recorded
    assert set(sink.of("fridge-1", "temperature")) | set(sink.of("fridge-2", "temperature")) == {4.3, -18.5}
    assert set(sink.of("fridge-1", "humidity")) | set(sink.of("fridge-2", "humidity")) == {61.2, 30.5}


def test_bus_adapter_that_vanishes_and_returns_is_reopened_by_the_driver():
    async def scenario():
        async with simulated_bus(xy_md02(1, 43, 612)) as bus:
            port = await bus.start()
            drv = driver(port, slaves=[{"sensor_id": "fridge-1", "address": 1, "profile": "xy-md02"}])
            sink = CollectingSink()
            async with Running(sink, drv):
                await sink.wait_for(lambda: len(sink.readings) >= 2)
                await bus.stop()  # the serial device server goes away
                await sink.wait_for(lambda: "driver_error" in sink.event_names())
                bus.server = await asyncio.start_server(bus._client, "127.0.0.1", port)
                await sink.wait_for(lambda: "driver_recovered" in sink.event_names())
                n = len(sink.readings)
                await sink.wait_for(lambda: len(sink.readings) >= n + 2)
        return sink, drv

    sink, drv = asyncio.run(scenario())
    errors = [d["error"] for _, e, d in sink.events if e == "driver_error"]
    assert errors[0] in ("DriverIOError", "DriverUnavailable")
    assert drv.status.restarts >= 1
