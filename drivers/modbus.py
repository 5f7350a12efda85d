"""Modbus RTU temperature/humidity probes on an RS-485 bus, polled through pymodbus.

One driver owns one bus (one serial port) and polls every configured slave once per
``interval_s``. What each slave holds is a *register map*: a built-in profile
(``xy-md02``: the common SHT20 transmitter, input registers 1 and 2, ×0.1, temperature
signed) or registers listed in the config (function code 3 or 4, register, one or two
words, signedness, word order, scale and offset, quantity and unit).

Faults are counted per kind and never stop the bus:

``timeouts``      no answer within ``timeout_s``
``crc_errors``    bytes came back but no valid frame (CRC mismatch, truncated frame)
``exceptions``    a Modbus exception response (illegal address, device busy, …)

A failed request is retried ``retries`` times while the slave is answering. A slave that
fails ``not_answering_after`` polls in a row is marked ``not_answering`` in the status
details and then tried once per poll without retries, so a dead probe costs the others
one timeout per poll and nothing more. A failure of the port itself (the USB adapter
unplugged) is a :class:`~drivers.exc.DriverIOError`: the base loop reopens the port.

The port is opened by :func:`drivers.serialport.open_port` (so ``socket://`` and by-id
paths work and errors are translated once) and handed to pymodbus's serial client;
pymodbus would open it itself, but swallows the reason when it cannot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import Driver, Options, Reading
from drivers.exc import DriverIOError
from drivers.fields import MAX_SECONDS, MIN_PERIOD_S
from drivers.serialport import SerialOptions, open_port

#: Exception codes worth an immediate retry (5 acknowledge, 6 device busy).
RETRY_EXCEPTIONS = frozenset({5, 6})
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
#: Registers merged into one request when they lie this close together.
MAX_BLOCK = 32


class RegisterMap(Options):
    """One value in a slave's registers."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    quantity: str = Field(min_length=1, description="docs/protocol.md quantity, e.g. temperature")
    unit: str = Field(min_length=1, description="SenML unit, e.g. Cel")
    # ``register`` in the config; not the attribute name, which would shadow ABCMeta.register
    reg: int = Field(alias="register", ge=0, le=65535, description="register address as sent on the wire (0-based)")
    function: Literal[3, 4] = Field(default=4, description="3 holding registers, 4 input registers")
    count: Literal[1, 2] = Field(default=1, description="words: 1 = 16 bit, 2 = 32 bit")
    signed: bool = Field(default=False, description="two's complement")
    word_order: Literal["big", "little"] = Field(default="big", description="32 bit: big = high word first")
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = 0.0
    invalid: list[int] = Field(default_factory=list, description="raw values that mean 'not available'")


PROFILES: dict[str, tuple[RegisterMap, ...]] = {
    # XY-MD02 / SHT20 transmitter: input registers 1 (temperature, signed) and 2 (humidity), ×0.1.
    "xy-md02": (
        RegisterMap(quantity="temperature", unit="Cel", register=1, function=4, signed=True, scale=0.1),
        RegisterMap(quantity="humidity", unit="%RH", register=2, function=4, scale=0.1),
    ),
}


class Slave(Options):
    """One device on the bus."""

    sensor_id: str = Field(min_length=1, description="sensor id the readings carry")
    address: int = Field(default=1, ge=1, le=247, description="Modbus slave address")
    profile: Literal["xy-md02"] | None = Field(default=None, description="built-in register map")
    registers: list[RegisterMap] = Field(default_factory=list, description="register map (after the profile's)")

    @model_validator(mode="after")
    def _has_map(self) -> Slave:
        if self.profile is None and not self.registers:
            raise ValueError("give a profile (e.g. 'xy-md02') or registers")
        return self

    def register_maps(self) -> list[RegisterMap]:
        return [*PROFILES.get(self.profile or "", ()), *self.registers]


class ModbusOptions(SerialOptions):
    """Options of a ``modbus`` driver: one RS-485 bus."""

    interval_s: float = Field(
        default=10.0, ge=MIN_PERIOD_S, le=MAX_SECONDS, description="seconds between polls of every slave")
    timeout_s: float = Field(default=0.5, ge=MIN_PERIOD_S, le=10, description="wait for one answer")
    retries: int = Field(default=2, ge=0, le=5, description="retries of a failed request")
    not_answering_after: int = Field(default=3, ge=1, description="failed polls in a row before a slave is reported")
    slaves: list[Slave] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ModbusOptions:
        addrs = [s.address for s in self.slaves]
        if len(set(addrs)) != len(addrs):
            raise ValueError("two slaves share an address")
        return self


# -- pure decoding ----------------------------------------------------------------------


def register_value(words: Sequence[int], m: RegisterMap) -> int:
    """The raw integer of ``m`` from its 1 or 2 words."""
    if m.count == 1:
        raw = words[0] & 0xFFFF
        bits = 16
    else:
        hi, lo = (words[0], words[1]) if m.word_order == "big" else (words[1], words[0])
        raw = ((hi & 0xFFFF) << 16) | (lo & 0xFFFF)
        bits = 32
    if m.signed and raw >= 1 << (bits - 1):
        raw -= 1 << bits
    return raw


def decode_registers(start: int, regs: Sequence[int], maps: Sequence[RegisterMap], sensor_id: str) -> list[Reading]:
    """Readings of the ``maps`` that lie inside the block ``regs`` read from ``start``."""
    out = []
    for m in maps:
        off = m.reg - start
        if off < 0 or off + m.count > len(regs):
            continue
        raw = register_value(regs[off : off + m.count], m)
        if raw in m.invalid:
            continue
        out.append(Reading(sensor_id, m.quantity, round(raw * m.scale + m.offset, 6), m.unit))
    return out


@dataclass(frozen=True)
class Block:
    """One read request: consecutive registers of one function code."""

    function: int
    start: int
    count: int
    maps: tuple[RegisterMap, ...]


def plan_blocks(maps: Sequence[RegisterMap]) -> list[Block]:
    """Group a slave's registers into as few requests as fit in ``MAX_BLOCK`` words."""
    blocks: list[Block] = []
    for fn in (3, 4):
        todo = sorted((m for m in maps if m.function == fn), key=lambda m: m.reg)
        cur: list[RegisterMap] = []
        for m in todo:
            if cur and m.reg + m.count - cur[0].reg > MAX_BLOCK:
                blocks.append(_block(fn, cur))
                cur = []
            cur.append(m)
        if cur:
            blocks.append(_block(fn, cur))
    return blocks


def _block(fn: int, maps: list[RegisterMap]) -> Block:
    start = maps[0].reg
    end = max(m.reg + m.count for m in maps)
    return Block(fn, start, end - start, tuple(maps))


# -- the driver ---------------------------------------------------------------------


class _Failed(Exception):
    def __init__(self, kind: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


class _SlaveState:
    def __init__(self, slave: Slave) -> None:
        self.slave = slave
        self.blocks = plan_blocks(slave.register_maps())
        self.failures = 0  # polls in a row
        self.answering = True
        self.details: dict[str, Any] = {
            "address": slave.address,
            "state": "unknown",
            "last_ok_at": None,
            "failed_polls": 0,
            "last_error": None,
        }


class ModbusDriver(Driver):
    """A Modbus RTU bus (see the module docstring)."""

    type_name = "modbus"
    Options = ModbusOptions
    options: ModbusOptions

    def __init__(self, name: str, options: ModbusOptions) -> None:
        super().__init__(name, options)
        self._slaves = [_SlaveState(s) for s in options.slaves]
        self._client: ModbusSerialClient | None = None
        self._rx_seen = False
        self._next_poll = 0.0
        self.status.details["port"] = options.port
        self.status.details["slaves"] = {s.slave.sensor_id: s.details for s in self._slaves}
        # pymodbus logs every unanswered request at ERROR; we count and rate-limit them
        # ourselves. Quieten it unless an operator has set its level on purpose.
        pm = logging.getLogger("pymodbus")
        if pm.level == logging.NOTSET:
            pm.setLevel(logging.CRITICAL)

    def _open(self) -> None:
        o = self.options
        port = open_port(o, timeout=o.timeout_s, driver=self.name)
        client = ModbusSerialClient(
            o.port,
            framer=FramerType.RTU,
            baudrate=o.baudrate,
            bytesize=o.bytesize,
            parity=o.parity,
            stopbits=int(o.stopbits),
            timeout=o.timeout_s,
            retries=0,
            trace_packet=self._trace,
        )
        # hand pymodbus the port we opened: its own connect() hides why an open failed
        client.socket = port  # type: ignore[assignment]
        try:
            port.inter_byte_timeout = client.inter_byte_timeout or None
        except (ValueError, OSError, AttributeError):
            pass  # URL handlers without inter-byte timing (socket://)
        client.transaction.max_until_disconnect = 1 << 30  # never let pymodbus "close" a quiet bus
        self._client = client
        self._next_poll = time.monotonic()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._rx_seen = True
        return data

    def _read(self, timeout: float) -> Iterable[Reading]:
        wait = self._next_poll - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout))
            if wait > timeout:
                return []
        self._next_poll = max(self._next_poll + self.options.interval_s, time.monotonic())
        out: list[Reading] = []
        for state in self._slaves:
            out += self._poll(state)
        self.status.counters["polls"] += 1
        return out

    def _poll(self, st: _SlaveState) -> list[Reading]:
        out: list[Reading] = []
        error: _Failed | None = None
        for block in st.blocks:
            try:
                regs = self._request_with_retries(st, block)
            except _Failed as exc:
                error = exc
                continue
            out += decode_registers(block.start, regs, block.maps, st.slave.sensor_id)
        d = st.details
        if error is None:
            if not st.answering:
                self.log.info("%s: slave %s (%s) answers again", self.name, st.slave.address, st.slave.sensor_id)
            st.failures, st.answering = 0, True
            d.update(state="ok", last_ok_at=time.time(), failed_polls=0)
            return out
        st.failures += 1
        d.update(failed_polls=st.failures, last_error=f"{error.kind}: {error}")
        if st.failures >= self.options.not_answering_after and error.kind != "exceptions":
            if st.answering:
                self.log.warning(
                    "%s: slave %s (%s) stopped answering: %s", self.name, st.slave.address, st.slave.sensor_id, error
                )
            st.answering = False
            d["state"] = "not_answering"
        elif d["state"] != "not_answering":
            d["state"] = "errors"
        return out  # blocks that did answer still count

    def _request_with_retries(self, st: _SlaveState, block: Block) -> list[int]:
        attempts = 1 + (self.options.retries if st.answering else 0)
        last: _Failed | None = None
        for attempt in range(attempts):
            try:
                regs = self._request(st.slave.address, block)
            except _Failed as exc:
                last = exc
                self.status.counters[exc.kind] += 1
                self.noisy.warning(
                    f"{st.slave.address}:{exc.kind}", "%s: slave %s: %s", self.name, st.slave.address, exc
                )
                if exc.kind == "exceptions" and exc.code not in RETRY_EXCEPTIONS:
                    break  # an illegal address will not become legal on a retry
                continue
            if attempt:
                self.status.counters["retried_ok"] += 1
            return regs
        assert last is not None
        raise last

    def _request(self, address: int, block: Block) -> list[int]:
        client = self._client
        assert client is not None
        self._rx_seen = False
        read = client.read_input_registers if block.function == 4 else client.read_holding_registers
        self.status.counters["requests"] += 1
        try:
            rr = read(block.start, count=block.count, device_id=address)
        except ModbusIOException as exc:
            if client.socket is None:  # pymodbus closed it after an OSError: the port is gone
                raise DriverIOError(f"{self.options.port}: {exc}", driver=self.name) from exc
            if self._rx_seen:
                raise _Failed("crc_errors", "no valid frame in the answer (CRC error or truncated)") from exc
            raise _Failed("timeouts", f"no answer within {self.options.timeout_s} s") from exc
        except ConnectionException as exc:
            raise DriverIOError(f"{self.options.port}: {exc}", driver=self.name) from exc
        except ModbusException as exc:
            raise _Failed("garbage", str(exc)) from exc
        except OSError as exc:
            raise DriverIOError(f"{self.options.port}: {exc}", driver=self.name) from exc
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            name = EXCEPTION_NAMES.get(code or 0, "unknown")
            raise _Failed("exceptions", f"exception response {code} ({name})", code)
        regs = list(getattr(rr, "registers", []) or [])
        if len(regs) < block.count:
            raise _Failed("garbage", f"{len(regs)} registers in the answer, {block.count} asked")
        return regs[: block.count]

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - a vanished adapter may fail to close
                self.log.debug("%s: close failed: %s", self.name, exc)
