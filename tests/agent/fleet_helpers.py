"""Fleet keys and signed configs for the tests: real keys, real files, real permissions."""

from __future__ import annotations

import os
from pathlib import Path

from agent.fleet.trust import generate, load_private, sign, signature_path, write_signature


class Fleet:
    """A fleet's keys in ``tmp/fleet-keys`` and a gateway keyring in ``tmp/trusted-keys``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.keydir = tmp / "fleet-keys"
        self.keyring = tmp / "trusted-keys"
        self.keyring.mkdir(mode=0o755, exist_ok=True)
        os.chmod(self.keyring, 0o755)
        self.keys: dict[str, tuple[Path, Path, str]] = {}

    def key(self, name: str, *, trusted: bool = True) -> str:
        """Make key ``name`` (its id); ``trusted`` installs its public half in the keyring."""
        self.keys[name] = generate(self.keydir / name)
        if trusted:
            self.trust(name)
        return self.keys[name][2]

    def trust(self, name: str) -> None:
        dest = self.keyring / f"{name}.pub"
        dest.write_bytes(self.keys[name][1].read_bytes())
        os.chmod(dest, 0o644)

    def distrust(self, name: str) -> None:
        (self.keyring / f"{name}.pub").unlink()

    def sign(self, path: Path, name: str) -> Path:
        sig = signature_path(path)
        write_signature(sig, sign(path.read_bytes(), load_private(self.keys[name][0])))
        return sig


def fleet_section(fleet: Fleet, *, require: bool = True, window: float = 0.0, inbox: Path | None = None) -> str:
    lines = ["[fleet]", f"require_signature = {'true' if require else 'false'}",
             f'trusted_keys = "{fleet.keyring}"', f"health_window_s = {window}"]
    if inbox is not None:
        lines += [f'inbox = "{inbox}"', "inbox_poll_s = 0.1"]
    return "\n".join(lines) + "\n"
