"""Theengs Decoder as a BLE format: about a hundred more sensor models, in our units.

Theengs Decoder (the ``theengsdecoder`` package, an optional extra: ``coldgate[theengs]``)
knows Xiaomi, Govee, Inkbird, SwitchBot, Qingping, ThermoPro, Blue Maestro, Sensirion …
It takes an advertisement as JSON (manufacturer data with its company id first, service
data with its UUID, the local name) and returns the model it recognised with values
under its own keys (``tempc``, ``hum``, ``pres`` in hPa, ``volt`` …), and
``getProperties(model_id)`` says each key's unit. This module turns that into
:class:`~drivers.ble.common.Decoded` measurements in docs/protocol.md's quantities and SenML
units, converting where Theengs uses others (°F, hPa, mV, g). A key this table does not
know is not guessed at: it goes to ``extra["unmapped"]`` (``coldgate decode`` shows it)
and is never recorded.

Pure apart from the decoder library; no I/O. Imported only when a sensor uses it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from drivers.ble.common import Decoded, Measurement, normalize_mac
from drivers.exc import DecodeError

INSTALL_HINT = "Theengs Decoder is not installed: pip install 'coldgate[theengs]' (see README, BLE)"

#: Theengs keys that describe the device, not a measurement.
_META = {"brand", "model", "model_id", "type", "cidc", "acts", "track", "mac", "name", "id", "rssi",
         "servicedata", "servicedatauuid", "manufacturerdata", "device", "mfid", "uuid", "major", "minor",
         "txpower", "tx", "seq", "time", "cont", "wake", "ctrl", "mode", "state", "uuid16", "extprobe"}

#: Theengs key -> our quantity (numbered probes: see _NUMBERED).
_QUANTITY = {
    "tempc": "temperature", "tempf": "temperature", "tempc_dp": "dewpoint", "tempc2_dp": "dewpoint",
    "tempf_dp": "dewpoint", "tempf2_dp": "dewpoint", "hum": "humidity", "batt": "battery",
    "batt_low": "battery_low", "lowbatt": "battery_low", "volt": "voltage", "pres": "pressure",
    "lux": "illuminance", "accx": "acceleration_x", "accy": "acceleration_y", "accz": "acceleration_z",
    "co2": "co2", "pm25": "pm2_5", "pm10": "pm10", "for": "formaldehyde", "tvoc": "tvoc",
    "moi": "moisture", "fer": "conductivity", "mov": "movement_count", "motion": "motion",
    "open": "opening",
}
_NUMBERED = re.compile(r"^(tempc|tempf|hum)(\d+)$")

_STANDARD_GRAVITY = 9.80665


def _same(v: float) -> float:
    return v


#: Theengs unit -> (SenML unit, conversion). ``%`` depends on the quantity (see _percent).
_UNITS: dict[str, tuple[str, Callable[[float], float]]] = {
    "°C": ("Cel", _same),
    "°F": ("Cel", lambda v: (v - 32) * 5 / 9),
    "hPa": ("Pa", lambda v: v * 100),
    "kPa": ("Pa", lambda v: v * 1000),
    "Pa": ("Pa", _same),
    "bar": ("Pa", lambda v: v * 100_000),
    "V": ("V", _same),
    "mV": ("V", lambda v: v / 1000),
    "lx": ("lx", _same),
    "m/s²": ("m/s2", _same),
    "g": ("m/s2", lambda v: v * _STANDARD_GRAVITY),
    "ppm": ("ppm", _same),
    "µg/m³": ("ug/m3", _same),
    "μg/m³": ("ug/m3", _same),
    "mg/m³": ("mg/m3", _same),
    "µS/cm": ("uS/cm", _same),
    "status": ("count", _same),
    "int": ("count", _same),
}
_PERCENT = {"humidity": "%RH", "battery": "%EL", "moisture": "%"}


def available() -> bool:
    """Whether the optional decoder is installed."""
    try:
        import TheengsDecoder  # noqa: F401
    except ImportError:
        return False
    return True


def _lib() -> Any:
    try:
        import TheengsDecoder
    except ImportError:
        raise DecodeError(INSTALL_HINT) from None
    return TheengsDecoder


@cache
def properties(model_id: str) -> dict[str, dict[str, str]]:
    """The unit and name of each key of a model, as Theengs Decoder describes it."""
    try:
        text = _lib().getProperties(model_id)
        return dict(json.loads(text).get("properties", {})) if text else {}
    except (ValueError, TypeError, AttributeError):
        return {}


def _uuid16(uuid: str) -> str:
    """bleak's 128-bit form of a SIG UUID -> Theengs' ``0xfe95``; others as they are."""
    u = uuid.lower()
    if u.startswith("0000") and u.endswith("-0000-1000-8000-00805f9b34fb"):
        return "0x" + u[4:8]
    return u


def candidates(
    service_data: Mapping[str, bytes], manufacturer_data: Mapping[int, bytes], name: str | None, mac: str | None
) -> list[dict[str, str]]:
    """The JSON documents to offer the decoder for one advertisement (usually one)."""
    base: dict[str, str] = {}
    if mac:
        base["id"] = mac
    if name:
        base["name"] = name
    mfg = [cid.to_bytes(2, "little").hex() + bytes(data).hex() for cid, data in manufacturer_data.items()]
    svc = [(_uuid16(u), bytes(data).hex()) for u, data in service_data.items()]
    docs: list[dict[str, str]] = []
    first: dict[str, str] = dict(base)
    if mfg:
        first["manufacturerdata"] = mfg[0]
    if svc:
        first["servicedatauuid"], first["servicedata"] = svc[0]
    if mfg or svc:
        docs.append(first)
    docs += [{**base, "servicedatauuid": u, "servicedata": d} for u, d in svc[1:]]
    docs += [{**base, "manufacturerdata": m} for m in mfg[1:]]
    if mfg and svc:  # some models are recognised only on one of the two
        docs += [{**base, "manufacturerdata": mfg[0]}, {**base, "servicedatauuid": svc[0][0], "servicedata": svc[0][1]}]
    return docs


def decode_json(doc: Mapping[str, str]) -> dict[str, Any] | None:
    """One decoder call: its result as a dict, or None when it recognises no model."""
    try:
        text = _lib().decodeBLE(json.dumps(doc))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise DecodeError(f"Theengs Decoder failed: {exc}") from None
    if not text:
        return None
    try:
        result = json.loads(text)
    except ValueError as exc:
        raise DecodeError(f"Theengs Decoder returned malformed JSON: {exc}") from None
    return result if isinstance(result, dict) and result.get("model_id") else None


def _clean(value: float) -> float:
    """Drop the float noise of a conversion: 1027.66 hPa is 102766 Pa, not 102766.00000000001."""
    return float(f"{value:.10g}")


def measurements(result: Mapping[str, Any]) -> tuple[list[Measurement], dict[str, Any]]:
    """A decoder result as our measurements, and what was left unmapped."""
    props = properties(str(result.get("model_id")))
    out: list[Measurement] = []
    unmapped: dict[str, Any] = {}
    celsius_keys = {k for k in result if k.startswith("tempc")}
    for key, value in result.items():
        if key in _META:
            continue
        if key.startswith("tempf") and "tempc" + key[5:] in celsius_keys:
            continue  # the same value in °F
        quantity = _QUANTITY.get(key)
        if quantity is None:
            m = _NUMBERED.match(key)
            if m:
                quantity = f"{_QUANTITY[m.group(1)]}_{m.group(2)}"
        unit_name = props.get(key, {}).get("unit") or ("°C" if key.startswith("tempc") else "")
        if key.startswith("tempf"):
            unit_name = "°F"
        if quantity is None or (unit_name != "%" and unit_name not in _UNITS):
            unmapped[key] = value
            continue
        if isinstance(value, bool):
            number = 1.0 if value else 0.0
        elif isinstance(value, int | float) and math.isfinite(value):
            number = float(value)
        else:
            unmapped[key] = value
            continue
        if unit_name == "%":
            base = quantity.split("_")[0] if quantity.startswith("humidity") else quantity
            unit = _PERCENT.get(base, "%")
            converted = number
        else:
            unit, convert = _UNITS[unit_name]
            converted = _clean(convert(number))
        out.append(Measurement(quantity, converted, unit))
    return out, unmapped


def decode(
    service_data: Mapping[str, bytes],
    manufacturer_data: Mapping[int, bytes],
    *,
    name: str | None = None,
    mac: str | None = None,
) -> Decoded | None:
    """Decode an advertisement with Theengs Decoder; None when it knows no model in it.

    Raises :class:`DecodeError` when the decoder is not installed or fails.
    """
    for doc in candidates(service_data, manufacturer_data, name, mac):
        result = decode_json(doc)
        if result is None:
            continue
        found, unmapped = measurements(result)
        payload_mac = result.get("mac")
        try:
            payload_mac = normalize_mac(payload_mac) if isinstance(payload_mac, str) else None
        except ValueError:
            payload_mac = None
        extra: dict[str, Any] = {"model_id": result["model_id"]}
        if unmapped:
            extra["unmapped"] = unmapped
        return Decoded(
            format="theengs",
            measurements=tuple(found),
            mac=payload_mac,
            model=str(result.get("model") or result["model_id"]),
            brand=str(result["brand"]) if result.get("brand") else None,
            extra=extra,
        )
    return None
