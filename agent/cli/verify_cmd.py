"""``coldgate verify PATH --key PUBKEY``: check an exported record chain, as an auditor would.

Reads JSON lines (one record per line, exactly as chained, with ``hash``), recomputes every
hash by RFC 8785, checks every link and every ``chain_checkpoint`` signature against the
gateway's public key, and reports gaps. It uses :mod:`agent.protocol` only — not the
store, the config or the producer's fast path — so what it says does not depend on the
code that made the records. ``docs/verify.md`` does the same in about thirty lines of Python.
Exit 0 only when every stream is complete and verified.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import add_json_arg, emit

DESCRIPTION = """\
Check an export of records (JSON lines, one record per line as chained): every hash
(RFC 8785), every prev_hash link, seq order and gaps, and every chain_checkpoint's
Ed25519 signature against the gateway's public key. Exit 0 only when every stream in the
file is complete, verified and covered by at least one valid checkpoint; 1 otherwise.

  coldgate verify stream.jsonl --key gateway.pub --gateway gw-0042
  coldgate verify - --key 03a107bf...31b8 --gateway gw-0042 --json < stream.jsonl
  coldgate verify export/chain.jsonl --key gateway.pub --gateway gw-0042 --from-seq 1812

--from-seq N checks a segment that starts at seq N (a shipment's export: its README.txt
and manifest.json give N): the records before it are not in the file and not a gap; the
first record's prev_hash is shown as the anchor, to compare with the gateway's or the
receiver's record N-1.

--key takes a file or the key itself: PEM (-----BEGIN PUBLIC KEY-----), or the raw 32-byte
key as 64 hex digits or base64, as `coldgate identity` prints it.
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="check an exported record chain: hashes, links, gaps, checkpoint signatures",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="the export, JSON lines ('-' for stdin)")
    p.add_argument("--key", metavar="PUBKEY", required=True, help="the gateway's public key: a file, or PEM/hex/base64")
    p.add_argument("--gateway", metavar="ID", help="the gateway's id (checkpoint signatures name it)")
    p.add_argument("--from-seq", metavar="N", type=_positive, default=1,
                   help="the file is a segment starting at seq N (a shipment's export), not a whole stream")
    add_json_arg(p)
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"a seq starts at 1, not {n}")
    return n


def _public_key(spec: str) -> bytes:
    from agent.protocol import ProtocolError, load_public_key

    path = Path(spec)
    try:
        text = path.read_bytes() if path.is_file() else spec.encode()
    except OSError as exc:
        raise ProtocolError(f"cannot read the key file {spec}: {exc.strerror}") from None
    return load_public_key(text)


def _lines(path: str) -> Any:
    if path == "-":
        yield from sys.stdin.buffer
        return
    try:
        with open(path, "rb") as f:
            yield from f
    except OSError as exc:
        from agent.protocol import ProtocolError

        raise ProtocolError(f"cannot read {path}: {exc.strerror}") from None


def check(path: str, public_key: bytes, gateway_id: str | None, from_seq: int = 1) -> dict[str, Any]:
    """The verification result of an export, as JSON (what ``--json`` prints)."""
    from agent.protocol import ChainVerifier, key_id

    verifier = ChainVerifier(gateway_id, public_key, from_seq=from_seq)
    unreadable: list[dict[str, Any]] = []
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            unreadable.append({"at": f"line {n}", "why": "not JSON", "detail": str(exc)[:200]})
            continue
        if not isinstance(record, dict):
            unreadable.append({"at": f"line {n}", "why": "not a record", "detail": "a line must hold a JSON object"})
            continue
        verifier.add(record, f"line {n}")
    streams = {sid: s.as_json() for sid, s in verifier.streams.items()}
    ok = verifier.ok and not unreadable
    return {
        "path": path,
        "gateway_id": gateway_id,
        "from_seq": from_seq,
        "key_id": key_id(public_key),
        "verdict": "complete-and-verified" if ok else "not-verified",
        "unreadable": unreadable,
        "streams": streams,
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['path']}: {result['verdict'].upper()} (key {result['key_id']}, gateway {result['gateway_id']})"]
    for u in result["unreadable"]:
        lines.append(f"  ! {u['at']}: {u['why']} ({u['detail']})")
    if not result["streams"]:
        lines.append("  ! no records")
    for sid, s in result["streams"].items():
        lines.append(f"  stream {sid}: {s['verdict']}")
        lines.append(f"    records     {s['records']}, seq {s['first_seq']}..{s['last_seq']}")
        if s.get("anchor_prev_hash"):
            lines.append(f"    segment     from seq {result['from_seq']}: records before it are not in this file; "
                         f"seq {result['from_seq']} links to {s['anchor_prev_hash']}")
        gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in s["gaps"]) or "none"
        lines.append(f"    gaps        {gaps}")
        for sa in s["set_aside"]:
            lines.append(
                f"    set aside   seq {sa['first_seq']}-{sa['last_seq']} by the gateway (HTTP {sa['status']}): "
                f"{str(sa['reason'])[:100]}"
            )
        lines.append(
            f"    checkpoints {s['verified_checkpoints']} of {s['checkpoints']} verified; "
            f"signed through seq {s['signed_through'] or 'none'}"
        )
        if s["checkpoints"] == 0:
            lines.append("    ! no checkpoint: nothing proves the chain was not rewritten whole")
        for p in s["problems"]:
            lines.append(f"    ! {p['at']}: seq {p['seq']}: {p['why']} ({p['detail']})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = check(args.path, _public_key(args.key), args.gateway, args.from_seq)
    emit(args, result, render)
    return 0 if result["verdict"] == "complete-and-verified" else 1
