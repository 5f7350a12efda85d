"""``coldgate keys generate``, ``coldgate config sign``, ``coldgate identity``: the fleet's tools."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli.common import add_config_arg, add_json_arg, emit, load_config


def register(sub: Any) -> None:
    keys: argparse.ArgumentParser = sub.add_parser("keys", help="fleet signing keys (for the fleet side)")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = ksub.add_parser("generate", help="make an Ed25519 key pair: NAME.key (private, 0600) and NAME.pub")
    gen.add_argument("name", help="path and stem of the files, e.g. keys/fleet-2025 (makes fleet-2025.key and .pub)")
    add_json_arg(gen)
    gen.set_defaults(func=cmd_keys_generate)

    ident = sub.add_parser("identity", help="this gateway's public key and key id (signs its chain checkpoints)")
    add_config_arg(ident)
    add_json_arg(ident)
    ident.set_defaults(func=cmd_identity)


def register_sign(csub: Any) -> None:
    """``coldgate config sign`` (registered by :mod:`agent.cli.config_cmd`)."""
    sign: argparse.ArgumentParser = csub.add_parser(
        "sign", help="sign a config with a fleet key: writes FILE.sig (a detached Ed25519 signature)")
    sign.add_argument("file", help="the config file to sign (checked first: an invalid file is not signed)")
    sign.add_argument("--key", required=True, help="the fleet's private key (from `coldgate keys generate`)")
    sign.add_argument("--out", help="where to write the signature (default: FILE.sig)")
    add_json_arg(sign)
    sign.set_defaults(func=cmd_sign)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from agent.fleet.trust import generate

    key_file, pub_file, kid = generate(Path(args.name))
    emit(args, {"key_id": kid, "private_key": str(key_file), "public_key": str(pub_file)},
         lambda d: f"key {d['key_id']}: private {d['private_key']} (mode 0600: keep it off the gateways), "
                   f"public {d['public_key']} (install it in each gateway's /etc/coldgate/trusted-keys/)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from agent import config
    from agent.fleet.gate import read_bytes
    from agent.fleet.trust import load_private, sign, signature_path, write_signature

    path = Path(args.file)
    data = read_bytes(path)
    cfg = config.loads(data.decode("utf-8", errors="strict"), source=str(path), base_dir=path.parent)
    doc = sign(data, load_private(Path(args.key)))
    out = Path(args.out) if args.out else signature_path(path)
    write_signature(out, doc)
    import hashlib

    result = {"file": str(path), "signature": str(out), "key_id": doc["key_id"], "gateway_id": cfg.gateway_id,
              "config_version": cfg.config_version, "sha256": hashlib.sha256(data).hexdigest()}
    note = "" if cfg.config_version else " (config_version is 0: set one, a gateway refuses going back)"
    emit(args, result, lambda d: f"{d['signature']}: {d['file']} (gateway {d['gateway_id']}, version "
                                 f"{d['config_version']}) signed by key {d['key_id']}{note}")
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    from agent.exc import IdentityError
    from agent.identity import default_path, describe_public, load_public

    cfg = load_config(args)
    path = cfg.identity.key or default_path(cfg.store.path)
    try:
        public = load_public(path)
    except FileNotFoundError:
        raise IdentityError(f"no identity in {path} yet: the agent makes it at its first start") from None
    data = describe_public(public, path)
    emit(args, data, lambda d: f"key id {d['key_id']} ({d['algorithm']}), {d['key_file']}\n"
                               f"public key (raw, hex): {d['public_key_hex']}\n{d['public_key_pem'].rstrip()}")
    return 0
