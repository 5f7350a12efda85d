"""Helpers shared by CLI commands: the config argument and ``--json`` output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/coldgate/coldgate.toml"


def add_config_arg(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument(
        "-c", "--config", metavar="FILE",
        default=None if required else os.environ.get("COLDGATE_CONFIG", DEFAULT_CONFIG),
        required=required,
        help=f"config file (default: $COLDGATE_CONFIG or {DEFAULT_CONFIG})",
    )


def add_json_arg(p: argparse._ActionsContainer) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def load_config(args: argparse.Namespace) -> Any:
    from agent import config

    return config.load(Path(args.config))


def emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else as ``text(data)``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        out = text(data)
        if out:
            print(out)
