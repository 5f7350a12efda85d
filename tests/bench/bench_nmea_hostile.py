"""Benchmark: hostile NMEA lines through ``parse_sentence`` (issue 9 item 12).

Run: ``.venv/bin/python tests/bench/bench_nmea_hostile.py``. Prints µs per line for whitespace-
padded lines of n and 4n characters up to the cap (:data:`drivers.nmea.MAX_SENTENCE`), and
for 32 KiB / 64 KiB lines (refused by length). Linear parsing shows a ratio near 4 (or
below: fixed costs) between 4n and n; 0.1.0's frame regex showed ~16 and took 6-10 s for
one 32 KiB line. Target: a line at the cap in ≤ 100 µs on a Pi 4.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.exc import DecodeError  # noqa: E402
from drivers.nmea import MAX_SENTENCE, parse_sentence  # noqa: E402

ROUNDS = 2000


def lines(n: int) -> list[str]:
    """Four hostile lines of at most ``n`` characters."""
    ws = " " * (n - 8)
    return ["$GP" + ws + "x", "$GPGGA," + ws + ",*", "$GPGGA," + ws + "*4", "$GPGGA," + ws]


def per_line_us(n: int) -> float:
    batch = lines(n)
    started = time.perf_counter()
    for _ in range(ROUNDS):
        for line in batch:
            try:
                parse_sentence(line, require_checksum=False)
            except DecodeError:
                pass
    return (time.perf_counter() - started) / (ROUNDS * len(batch)) * 1e6


def main() -> None:
    base = MAX_SENTENCE // 4
    small, big = per_line_us(base), per_line_us(MAX_SENTENCE)
    print(f"n = {base:>6} chars: {small:8.2f} µs/line")
    print(f"4n = {MAX_SENTENCE:>5} chars: {big:8.2f} µs/line   ratio 4n/n = {big / small:.2f} (linear: ≤ 4)")
    for n in (32 * 1024, 64 * 1024):
        print(f"{n:>10} chars: {per_line_us(n):8.2f} µs/line (refused by length)")


if __name__ == "__main__":
    main()
