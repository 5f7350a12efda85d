"""Trip report of a 7-day trip: 4 probes at one reading a minute plus GPS (~50,000 records).

Builds the trip in a real store (as the agent's writer would: book, rule engine, tags),
then times what ``coldgate report --pdf`` does: read the range from the store, build the
model (every hash re-verified), render the PDF. Prints the figures and peak RSS.
Run: .venv/bin/python tests/bench/bench_report.py
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.report import build, render_pdf  # noqa: E402
from agent.report.source import from_store, source_of_store  # noqa: E402
from agent.store import Store  # noqa: E402
from tests.report.trip import GATEWAY  # noqa: E402
from tests.report.trip import build as build_trip


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        trip = build_trip(Path(d) / "store.db", hours=7 * 24, interval_s=60.0, sensors=("p1", "p2", "p3", "p4"),
                          gps_every_s=120.0, ack=False)
        head = trip.store.head()[0]
        trip.store.close()
        built = time.perf_counter() - t0
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t1 = time.perf_counter()
        with Store.open(Path(d) / "store.db", gateway_id=GATEWAY, create=False, check=False) as store:
            sel = from_store(store, "SHP-TRIP-1")
            source = source_of_store(store)
        t2 = time.perf_counter()
        model = build(sel, source=source)
        t3 = time.perf_counter()
        render_pdf(model, str(Path(d) / "report.pdf"))
        t4 = time.perf_counter()
        size = (Path(d) / "report.pdf").stat().st_size
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"trip: {head} records in the store ({len(sel.records)} in the shipment's range), built in {built:.1f} s")
    print(f"read range {t2 - t1:.2f} s, model (hashes verified) {t3 - t2:.2f} s, PDF {t4 - t3:.2f} s "
          f"({size / 1024:.0f} KiB): report total {t4 - t1:.2f} s")
    print(f"peak RSS {rss / 1024:.0f} MiB (before the report: {rss0 / 1024:.0f} MiB, while building the trip)")


if __name__ == "__main__":
    main()
