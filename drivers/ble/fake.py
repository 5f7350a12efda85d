"""An in-process BLE radio behind bleak's own backend seam (``BleakScanner(backend=…)``).

It ships in the package, as httpx ships ``MockTransport`` and python-can its virtual
bus: tests, benchmarks and a bench ``coldgate run`` (``backend = "fake"`` in the driver
config) drive the real driver, through the real ``BleakScanner``, with advertisements
made up in-process. Only the radio is fake.

A :class:`FakeAir` is the ether: every scanner started on it hears what is advertised
on it, filtered as BlueZ would (service UUIDs; or-patterns when passive). Faults are
injected the way adapters fail: :meth:`FakeAir.fail_next_start` (BlueZ missing, adapter
absent or powered off), :meth:`FakeAir.reset_adapter` (running scans silently stop
hearing anything, as after an adapter reset), :meth:`FakeAir.stall_adapter` (the Pi's
stuck adapter: silent, and every new scan refused with ``InProgress`` until the adapter
is power-cycled or, for a hard stall, reset), :meth:`FakeAir.remove_adapter` (vanished),
``passive_supported = False`` (no advertisement-monitor API: BlueZ refuses passive
scans). :class:`FakeAdapterControl` (``air.control``) is the BlueZ boundary of adapter
recovery on this radio, as :class:`drivers.ble.adapter.BluezAdapterControl` is on a real one::

    air = fake.air("bench")
    driver = BleDriver("ble", opts, scanner_backend=air.backend)
    air.advertise("A4:C1:38:8D:18:B2", service_data={0xFCD2: bytes.fromhex("4002c40903bf13")})

A radio in another process (a ``coldgate run`` under test or on a bench, a process a
test SIGKILLs) is fed through a Unix datagram socket: the driver option ``fake_feed``
makes the radio listen there (:meth:`FakeAir.listen`), and :func:`feed` /
:func:`feed_fault` send it one advertisement or one fault per datagram, from anywhere::

    fake.feed("/run/coldgate/air.sock", "A4:C1:38:8D:18:B2", service_data={0xFCD2: frame})
    fake.feed_fault("/run/coldgate/air.sock", "stall_adapter", adapter="hci0")
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble.adapter import AdapterState
from drivers.exc import DriverUnavailable

log = logging.getLogger(__name__)

_AIRS: dict[str, FakeAir] = {}
#: The faults a feed may inject (FakeAir methods taking ``name`` and keywords).
FEED_FAULTS = ("reset_adapter", "stall_adapter", "remove_adapter")


def air(name: str = "default") -> FakeAir:
    """The fake radio called ``name``, created on first use (python-can's virtual channels)."""
    found = _AIRS.get(name)
    if found is None:
        found = _AIRS[name] = FakeAir(name)
    return found


def uuid16(u: int) -> str:
    """A 16-bit SIG UUID in the 128-bit form bleak uses as a ``service_data`` key."""
    return f"0000{u:04x}-0000-1000-8000-00805f9b34fb"


@dataclass
class FakeAdapter:
    """One adapter of the fake radio: ``stall`` is None (well), ``"soft"`` or ``"hard"``."""

    name: str
    present: bool = True
    powered: bool = True
    stall: str | None = None
    back_after_reset: bool = True  # a vanished adapter that a controller (USB) reset brings back
    resets: int = 0
    power_cycles: int = 0


@dataclass
class Beacon:
    """A device that advertises the same payload every ``interval_s`` while anyone scans."""

    address: str
    service_data: Mapping[Any, bytes]
    manufacturer_data: Mapping[int, bytes]
    rssi: int
    local_name: str | None
    interval_s: float


class FakeAir:
    """The ether shared by fake scanners; see the module docstring."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.scanners: set[FakeScanner] = set()
        self.passive_supported = True
        self.start_attempts = 0
        self.starts = 0
        self.delivered = 0
        self.beacons: list[Beacon] = []
        self._start_errors: deque[BaseException] = deque()
        self._start_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._beacon_task: asyncio.Task[None] | None = None
        self.adapters: dict[str, FakeAdapter] = {}
        #: feed messages refused as malformed (:meth:`listen`)
        self.feed_errors = 0
        #: The BlueZ boundary of adapter recovery for this radio.
        self.control = FakeAdapterControl(self)
        owner = self

        class Scanner(FakeScanner):
            air = owner

        Scanner.__name__ = Scanner.__qualname__ = f"FakeScanner[{name}]"
        #: The backend class to pass as ``BleakScanner(backend=…)``.
        self.backend: type[FakeScanner] = Scanner

    # -- fault injection ------------------------------------------------------------
    def fail_next_start(self, *errors: BaseException) -> None:
        """Make the next ``len(errors)`` scanner starts raise these, in order."""
        self._start_errors.extend(errors)

    def reset_adapter(self) -> None:
        """Running scans stop hearing anything (BlueZ lost the discovery session)."""
        self.scanners.clear()

    def adapter(self, name: str | None) -> FakeAdapter:
        """The fake adapter called ``name`` (None: the default adapter, hci0)."""
        key = name or "hci0"
        found = self.adapters.get(key)
        if found is None:
            found = self.adapters[key] = FakeAdapter(key)
        return found

    def stall_adapter(self, name: str | None = None, *, hard: bool = False) -> None:
        """The adapter goes silent and refuses new scans (``InProgress``) until recovered.

        A soft stall is cured by a power cycle; a hard one only by a controller reset.
        """
        adapter = self.adapter(name)
        adapter.stall = "hard" if hard else "soft"
        self.scanners = {s for s in self.scanners if s.adapter != adapter.name}

    def remove_adapter(self, name: str | None = None, *, back_after_reset: bool = True) -> None:
        """The adapter vanishes (from D-Bus and from the scans running on it)."""
        adapter = self.adapter(name)
        adapter.present = False
        adapter.back_after_reset = back_after_reset
        self.scanners = {s for s in self.scanners if s.adapter != adapter.name}

    # -- the air --------------------------------------------------------------------
    @property
    def scanning(self) -> bool:
        return bool(self.scanners)

    def advertise(
        self,
        address: str,
        *,
        service_data: Mapping[Any, bytes] | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        rssi: int = -60,
        local_name: str | None = None,
        service_uuids: list[str] | None = None,
        tx_power: int | None = None,
    ) -> int:
        """Send one advertisement to every running scanner; return how many heard it.

        ``service_data`` keys may be 16-bit UUIDs (``0xFCD2``) or bleak's 128-bit strings.
        """
        sd = {(uuid16(k) if isinstance(k, int) else k.lower()): bytes(v) for k, v in (service_data or {}).items()}
        md = {int(k): bytes(v) for k, v in (manufacturer_data or {}).items()}
        adv = AdvertisementData(
            local_name=local_name,
            manufacturer_data=md,
            service_data=sd,
            service_uuids=[u.lower() for u in (service_uuids or [])] or list(sd),
            tx_power=tx_power,
            rssi=rssi,
            platform_data=(),
        )
        heard = 0
        for scanner in list(self.scanners):
            heard += scanner.deliver(address.upper(), adv)
        self.delivered += heard
        return heard

    def add_beacon(
        self,
        address: str,
        *,
        service_data: Mapping[Any, bytes] | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        rssi: int = -60,
        local_name: str | None = None,
        interval_s: float = 0.05,
    ) -> None:
        """A device that keeps advertising while any scanner runs (for discovery demos)."""
        self.beacons.append(
            Beacon(address, dict(service_data or {}), dict(manufacturer_data or {}), rssi, local_name, interval_s)
        )

    # -- fed from another process ------------------------------------------------------
    async def listen(self, path: str) -> asyncio.DatagramTransport:
        """Take advertisements and faults from the Unix datagram socket ``path`` (see
        :func:`feed`) on the running loop, until the returned transport is closed. A
        socket file left by a killed process is replaced."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Feed(self), local_addr=path,
                                                           family=socket.AF_UNIX)
        return transport

    def take(self, message: Mapping[str, Any]) -> None:
        """One message of a feed: an advertisement, or ``{"fault": …}``; ValueError if malformed."""
        fault = message.get("fault")
        if fault is not None:
            if fault not in FEED_FAULTS:
                raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FEED_FAULTS)})")
            if fault == "reset_adapter":
                self.reset_adapter()
                return
            kw = {"hard": bool(message.get("hard"))} if fault == "stall_adapter" else {
                "back_after_reset": bool(message.get("back_after_reset", True))}
            getattr(self, fault)(message.get("adapter"), **kw)
            return
        address = message.get("address")
        if not isinstance(address, str):
            raise ValueError("an advertisement needs an 'address'")
        self.advertise(
            address,
            service_data={(int(k, 16) if len(k) == 4 else k): bytes.fromhex(v)
                          for k, v in (message.get("service_data") or {}).items()},
            manufacturer_data={int(k): bytes.fromhex(v) for k, v in (message.get("manufacturer_data") or {}).items()},
            rssi=int(message.get("rssi", -60)),
            local_name=message.get("local_name"),
        )

    async def wait_started(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``n`` scanner starts have succeeded in total (TimeoutError otherwise)."""
        if self.starts >= n:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._start_waiters.append((n, fut))
        await asyncio.wait_for(fut, timeout)

    # -- called by FakeScanner ------------------------------------------------------
    def _started(self, scanner: FakeScanner) -> None:
        self.scanners.add(scanner)
        self.starts += 1
        for n, fut in list(self._start_waiters):
            if self.starts >= n:
                self._start_waiters.remove((n, fut))
                if not fut.done():
                    fut.set_result(None)
        if self.beacons and (self._beacon_task is None or self._beacon_task.done()):
            self._beacon_task = asyncio.get_running_loop().create_task(self._run_beacons())

    async def _run_beacons(self) -> None:
        # Each beacon on its own period; stop when nobody listens any more.
        due = [0.0] * len(self.beacons)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while self.scanners:
            now = loop.time() - start
            for i, b in enumerate(self.beacons):
                if due[i] <= now:
                    self.advertise(
                        b.address,
                        service_data=b.service_data,
                        manufacturer_data=b.manufacturer_data,
                        rssi=b.rssi,
                        local_name=b.local_name,
                    )
                    due[i] = now + b.interval_s
            # radio timing, not a test waiting for an outcome
            await asyncio.sleep(max(0.001, min(due) - (loop.time() - start)))


class FakeScanner(BaseBleakScanner):
    """A bleak scanner backend on a :class:`FakeAir` (use ``FakeAir.backend``)."""

    air: FakeAir

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        bluez: Mapping[str, Any] | None = None,
        cb: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.scanning_mode = scanning_mode
        self.bluez = dict(bluez or {})
        self.or_patterns = list(self.bluez.get("or_patterns") or [])
        self.adapter: str = self.bluez.get("adapter") or "hci0"
        if scanning_mode == "passive" and not self.or_patterns:
            raise BleakError("passive scanning mode requires bluez or_patterns")  # as BlueZ's backend does

    async def start(self) -> None:
        air = self.air
        air.start_attempts += 1
        if air._start_errors:
            raise air._start_errors.popleft()
        if self.scanning_mode == "passive" and not air.passive_supported:
            raise BleakError("org.bluez.Error.NotSupported: advertisement monitor API not available")
        adapter = air.adapter(self.adapter)
        if not adapter.present:
            raise BleakError(f"adapter '{adapter.name}' not found")
        if not adapter.powered:
            raise BleakError(f"org.bluez.Error.NotReady: Resource Not Ready ({adapter.name} powered off)")
        if adapter.stall:
            raise BleakError("org.bluez.Error.InProgress: Operation already in progress")
        self.seen_devices = {}
        air._started(self)

    async def stop(self) -> None:
        self.air.scanners.discard(self)

    def deliver(self, address: str, adv: AdvertisementData) -> int:
        """Hand one advertisement to this scanner's callbacks if it passes the filters."""
        if not self.is_allowed_uuid(adv.service_uuids):
            return 0
        if self.scanning_mode == "passive" and not any(_matches(p, adv) for p in self.or_patterns):
            return 0
        device = self.create_or_update_device(address, address, adv.local_name, None, adv)
        self.call_detection_callbacks(device, adv)
        return 1


class FakeAdapterControl:
    """:class:`drivers.ble.adapter.AdapterControl` on a :class:`FakeAir`'s adapters.

    ``calls`` lists what was asked, in order; ``fail_next(n)`` makes the next ``n`` calls
    fail as BlueZ does when it cannot reach the adapter.
    """

    def __init__(self, air: FakeAir) -> None:
        self.air = air
        self.calls: list[tuple[str, str]] = []
        self._failures = 0

    def fail_next(self, n: int = 1) -> None:
        self._failures += n

    def _check(self, what: str, adapter: str) -> FakeAdapter:
        self.calls.append((what, adapter))
        if self._failures:
            self._failures -= 1
            raise DriverUnavailable(f"BlueZ could not {what.replace('_', ' ')} {adapter} (fault injected)")
        return self.air.adapter(adapter)

    async def state(self, adapter: str) -> AdapterState:
        a = self.air.adapter(adapter)
        scanning = any(s.adapter == a.name for s in self.air.scanners)
        if not a.present:
            return AdapterState(present=False)
        return AdapterState(present=True, powered=a.powered, discovering=scanning and a.stall is None)

    async def power_cycle(self, adapter: str) -> None:
        a = self._check("power_cycle", adapter)
        if not a.present:
            raise DriverUnavailable(f"{adapter} is not present: a power cycle cannot reach it")
        a.power_cycles += 1
        a.powered = True
        if a.stall == "soft":
            a.stall = None
        self.air.scanners = {s for s in self.air.scanners if s.adapter != a.name}  # powering off ends scans

    async def reset(self, adapter: str) -> None:
        a = self._check("reset", adapter)
        a.resets += 1
        if not a.present and not a.back_after_reset:
            raise DriverUnavailable(f"{adapter} did not come back after a controller reset")
        a.present, a.powered, a.stall = True, True, None
        self.air.scanners = {s for s in self.air.scanners if s.adapter != a.name}


class _Feed(asyncio.DatagramProtocol):
    """One JSON message a datagram, into a :class:`FakeAir`; a bad one is logged and skipped."""

    def __init__(self, air: FakeAir) -> None:
        self.air = air

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            message = json.loads(data)
            if not isinstance(message, dict):
                raise ValueError("not a JSON object")
            self.air.take(message)
        except (ValueError, TypeError, AttributeError) as exc:
            self.air.feed_errors += 1
            log.warning("fake radio %s: feed message refused (%s): %.200r", self.air.name, exc, data)


def feed(path: str, address: str, *, service_data: Mapping[Any, bytes] | None = None,
         manufacturer_data: Mapping[int, bytes] | None = None, rssi: int = -60,
         local_name: str | None = None) -> None:
    """Send one advertisement to the fake radio listening on ``path`` (any process).

    ``service_data`` keys as for :meth:`FakeAir.advertise` (16-bit ints or 128-bit strings).
    """
    _send(path, {
        "address": address, "rssi": rssi, "local_name": local_name,
        "service_data": {(f"{k:04x}" if isinstance(k, int) else k): bytes(v).hex()
                         for k, v in (service_data or {}).items()},
        "manufacturer_data": {str(int(k)): bytes(v).hex() for k, v in (manufacturer_data or {}).items()},
    })


def feed_fault(path: str, fault: str, *, adapter: str | None = None, **kw: Any) -> None:
    """Inject one of :data:`FEED_FAULTS` into the fake radio listening on ``path``."""
    _send(path, {"fault": fault, "adapter": adapter, **kw})


def _send(path: str, message: Mapping[str, Any]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(json.dumps(message).encode(), path)


def _matches(pattern: Any, adv: AdvertisementData) -> bool:
    """A BlueZ or-pattern (start, AD type, content) against the AD elements it names."""
    start, ad_type, content = pattern
    elements: list[bytes] = []
    if int(ad_type) == 0x16:  # service data, 16-bit UUID: UUID little-endian + data
        for key, data in adv.service_data.items():
            if key.endswith("-0000-1000-8000-00805f9b34fb") and key.startswith("0000"):
                elements.append(int(key[4:8], 16).to_bytes(2, "little") + data)
    elif int(ad_type) == 0xFF:  # manufacturer data: company id little-endian + data
        elements = [cid.to_bytes(2, "little") + data for cid, data in adv.manufacturer_data.items()]
    return any(el[start : start + len(content)] == content for el in elements)
