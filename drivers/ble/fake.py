"""An in-process BLE radio behind bleak's own backend seam (``BleakScanner(backend=…)``).

It ships in the package, as httpx ships ``MockTransport`` and python-can its virtual
bus: tests, benchmarks and a bench ``coldgate run`` (``backend = "fake"`` in the driver
config) drive the real driver, through the real ``BleakScanner``, with advertisements
made up in-process. Only the radio is fake.

A :class:`FakeAir` is the ether: every scanner started on it hears what is advertised
on it, filtered as BlueZ would (service UUIDs; or-patterns when passive). Faults are
injected the way adapters fail: :meth:`FakeAir.fail_next_start` (BlueZ missing, adapter
absent or powered off), :meth:`FakeAir.reset_adapter` (running scans silently stop
hearing anything, as after an adapter reset), ``passive_supported = False`` (no
advertisement-monitor API: BlueZ refuses passive scans)::

    air = fake.air("bench")
    driver = BleDriver("ble", opts, scanner_backend=air.backend)
    air.advertise("A4:C1:38:8D:18:B2", service_data={0xFCD2: bytes.fromhex("4002c40903bf13")})
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.exc import BleakError

_AIRS: dict[str, FakeAir] = {}


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
        if scanning_mode == "passive" and not self.or_patterns:
            raise BleakError("passive scanning mode requires bluez or_patterns")  # as BlueZ's backend does

    async def start(self) -> None:
        air = self.air
        air.start_attempts += 1
        if air._start_errors:
            raise air._start_errors.popleft()
        if self.scanning_mode == "passive" and not air.passive_supported:
            raise BleakError("org.bluez.Error.NotSupported: advertisement monitor API not available")
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
