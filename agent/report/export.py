"""``coldgate export``: a shipment's records exactly as chained, the report, and how to check them.

``records.jsonl`` holds, one per line, the RFC 8785 canonical JSON of each record without
its ``hash`` — the very bytes the hash covers — so anyone can re-verify the chain with
nothing but Python's ``hashlib`` and ``json`` (``README.txt`` shows how). ``chain.jsonl``
holds the same records as sent, with ``hash``, followed by the records up to the signed
``chain_checkpoint`` that seals the shipment: what ``coldgate verify --from-seq`` and the
script of docs/verify.md check, signature included. ``hashes.txt``
lists ``seq hash`` per line, ``report.json`` is the report model, ``report.pdf`` the PDF
(when the ``report`` extra is installed), ``manifest.json`` the SHA-256 of each file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from agent.canonical import canonical
from agent.report.select import Selection

README = """\
Shipment {shipment}: records {first_seq}-{last_seq} of stream {stream} (gateway {gateway}),
exported by {generated_by} at {generated_at}.

records.jsonl  one record per line: its RFC 8785 canonical JSON without "hash",
               exactly the bytes its hash covers
chain.jsonl    the same records as sent (with "hash"), then {seal_note}
hashes.txt     "seq hash" per record, as the gateway computed it
report.json    the trip report as data; report.pdf the same for people
manifest.json  SHA-256 of each file

To re-verify without coldgate (Python 3, standard library only): each record's hash is
SHA-256 of its prev_hash (hex text) followed by its line; each prev_hash must be the
hash of the record before; the last hash must be the head hash in the report, the QR
code of the report's first page, and the receiver's copy.

    import hashlib, json
    prev, last_seq = None, None
    for line in open("records.jsonl", "rb"):
        body = line.rstrip(b"\\n")
        rec = json.loads(body)
        if last_seq is not None and rec["seq"] != last_seq + 1:
            print("gap before seq", rec["seq"])        # records missing: cannot link across
        elif prev is not None and rec["prev_hash"] != prev:
            print("chain break at seq", rec["seq"])
        prev = hashlib.sha256(rec["prev_hash"].encode() + body).hexdigest()
        last_seq = rec["seq"]
    print("head", prev, "expected {head_hash}")

The first record's prev_hash ({anchor}) is the hash of seq {before}, which the gateway
and the receiver hold: it ties this range to the rest of the stream.

With the gateway's public key (`coldgate identity` prints it), the full check — the
canonical form, gaps, and the Ed25519 signature of the checkpoint that seals the range:

  coldgate verify chain.jsonl --key PUBKEY --gateway {gateway} --from-seq {first_seq}

or, without coldgate, the script in docs/verify.md with {first_seq} as its fourth argument.
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(sel: Selection, model: dict[str, Any], out: str | Path, *, pdf: bool = True) -> dict[str, Any]:
    """Write the export into ``out`` (created); returns the manifest."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "records.jsonl", "wb") as fh, open(d / "hashes.txt", "w", encoding="ascii") as hs:
        for rec in sel.records:
            fh.write(canonical({k: v for k, v in rec.items() if k != "hash"}) + b"\n")
            hs.write(f"{rec['seq']} {rec.get('hash')}\n")
    with open(d / "chain.jsonl", "wb") as ch:
        for rec in [*sel.records, *sel.seal]:
            ch.write(canonical(rec) + b"\n")
    sealed_by = int(sel.seal[-1]["seq"]) if sel.seal else None
    (d / "report.json").write_text(json.dumps(model, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    notes = []
    if pdf:
        try:
            from agent.report.pdf import render
        except ImportError:
            notes.append("report.pdf not written: install coldgate[report] (fpdf2, segno)")
        else:
            render(model, str(d / "report.pdf"))
    integ = model["integrity"]
    (d / "README.txt").write_text(README.format(
        shipment=sel.shipment, first_seq=sel.first_seq, last_seq=sel.last_seq, stream=sel.stream,
        gateway=model["shipment"]["gateway"], generated_by=model["generated_by"], generated_at=model["generated_at"],
        head_hash=integ["head_hash"], anchor=integ["anchor_prev_hash"], before=sel.first_seq - 1,
        seal_note=(f"records {sel.last_seq + 1}-{sealed_by}, up to the chain_checkpoint (seq {sealed_by})\n"
                   f"               that signs the range" if sealed_by is not None else
                   "no checkpoint: none sealing this range was found (the shipment\n"
                   "               is in progress, or the agent stopped before sealing it)")), encoding="utf-8")
    files = {p.name: _sha256(p) for p in sorted(d.iterdir()) if p.name != "manifest.json" and p.is_file()}
    manifest = {"shipment": sel.shipment, "stream": sel.stream, "first_seq": sel.first_seq, "last_seq": sel.last_seq,
                "records": len(sel.records), "head_hash": integ["head_hash"], "anchor_prev_hash": integ["anchor_prev_hash"],
                "sealed_by_checkpoint": sealed_by,
                "verdict": model["verdict"]["status"], "integrity": integ["verdict"], "files": files, "notes": notes,
                "out": str(d)}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
