"""Benchmark: rule evaluation cost per sample, 100 sensors with 6 rules each.

Run: ``.venv/bin/python tests/bench/bench_rules.py``. Prints µs per sample (target ≤ 20).
Each sensor runs: high and low single-event limits, a trip time-out-of-range budget, MKT,
time to breach, and data missing, over temperature samples with noise and excursions, so
that excursions, delays and clears happen during the run (not a steady-state best case).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.rules.config import RulesConfig  # noqa: E402
from agent.rules.engine import RuleEngine, Sample  # noqa: E402

SENSORS = 100
ROUNDS = 600  # samples per sensor
RULES = {
    "high": {"type": "above", "limit": 8.0, "delay_s": 300.0, "hysteresis": 0.3},
    "low": {"type": "below", "limit": 2.0, "delay_s": 300.0, "hysteresis": 0.3},
    "tor": {"type": "budget", "above": 8.0, "below": 2.0, "budget_s": 3600.0},
    "mkt": {"type": "mkt", "limit": 8.0},
    "trend": {"type": "time_to_breach", "op": "above", "limit": 8.0, "horizon_s": 1800.0},
    "missing": {"type": "missing", "timeout_s": 900.0},
}


def samples() -> list[Sample]:
    rng = random.Random(1)
    out = []
    t0 = 1_795_000_000.0
    for k in range(ROUNDS):
        for i in range(SENSORS):
            base = 9.0 if (k + 7 * i) % 200 < 30 else 5.0  # a 30-sample excursion every 200
            out.append(Sample(f"p{i:03d}", "temperature", base + rng.gauss(0, 0.2), "Cel", t0 + 60.0 * k + i * 0.01))
    return out


def main() -> float:
    cfg = RulesConfig(profiles={"bench": {"rules": RULES}})
    engine = RuleEngine(cfg, {f"p{i:03d}": "bench" for i in range(SENSORS)})
    data = samples()
    changes = 0
    observe = engine.observe
    start = time.perf_counter()
    for s in data:
        changes += len(observe(s))
    elapsed = time.perf_counter() - start
    us = elapsed / len(data) * 1e6
    print(f"rules: {SENSORS} sensors x {len(RULES)} rules, {len(data)} samples, {changes} alarm changes: "
          f"{us:.2f} us per sample (target <= 20)")
    return us


if __name__ == "__main__":
    main()
