"""``coldgate readings``: recent readings from the store, by sensor, ``--follow``, ``--csv``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, load_config

CSV_COLUMNS = ("ts", "sensor_id", "quantity", "value", "unit")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("readings", help="recent readings from the store")
    add_config_arg(p)
    p.add_argument("--sensor", help="only this sensor id")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many recent readings (default 20; 0 = all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new readings as they are stored")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV: ts,sensor_id,quantity,value,unit (for rules replay)")
    add_json_arg(out)
    p.set_defaults(func=cmd_readings)


def cmd_readings(args: argparse.Namespace) -> int:
    from agent.store import Store

    cfg = load_config(args)
    with Store.open(cfg.store.path, gateway_id=cfg.gateway_id, create=False, check=False) as store:
        recent = store.records(type="reading", sensor_id=args.sensor, limit=args.limit or None, descending=True)
        recent.reverse()
        writer = csv.writer(sys.stdout) if args.csv else None
        if writer is not None:
            writer.writerow(CSV_COLUMNS)
        if args.json and not args.follow:
            json.dump(recent, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        last = _print(recent, args, writer)
        if not args.follow:
            return 0
        last = last or store.head()[0]
        while True:
            sys.stdout.flush()
            time.sleep(1.0)
            new = store.records(type="reading", sensor_id=args.sensor, since_seq=last)
            last = _print(new, args, writer) or last


def _print(records: list[dict[str, Any]], args: argparse.Namespace, writer: Any) -> int | None:
    last = None
    for r in records:
        last = r["seq"]
        if writer is not None:
            writer.writerow([r["ts"], r["sensor_id"], r["quantity"], r["value"], r["unit"]])
        elif args.json:
            print(json.dumps(r))
        else:
            extra = f"  [{r['time_quality']}]" if r["time_quality"] != "synced" else ""
            print(f"{r['ts']}  {r['sensor_id']:<14} {r['quantity']:<12} {r['value']:>10} {r['unit']:<5} "
                  f"seq {r['seq']}{extra}")
    return last
