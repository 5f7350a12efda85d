"""The README documents every CLI command, and what it names exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from agent.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _commands(parser: argparse.ArgumentParser, prefix: str = "coldgate") -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(f"{prefix} {name}")
                out += _commands(sub, f"{prefix} {name}")
    return out


def test_readme_documents_every_cli_command_and_subcommand() -> None:
    commands = _commands(build_parser())
    assert "coldgate config check" in commands and "coldgate decode nmea" in commands
    missing = [c for c in commands if c not in README]
    assert missing == []


def test_every_command_offers_json_output() -> None:
    # run, demo, config schema (JSON already) and the two serving modes print no report
    exempt = {"coldgate run", "coldgate demo", "coldgate config schema", "coldgate config", "coldgate decode",
              "coldgate rules", "coldgate receiver"}

    def leaves(parser: argparse.ArgumentParser, prefix: str = "coldgate"):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield prefix, parser
        for action in subs:
            for name, sub in action.choices.items():
                yield from leaves(sub, f"{prefix} {name}")

    lacking = [name for name, p in leaves(build_parser())
               if name not in exempt and not any("--json" in a.option_strings for a in p._actions)]
    assert lacking == []


def test_files_the_readme_points_at_exist() -> None:
    for rel in re.findall(r"\]\(((?!\.\./|https?:)[^)#]+)\)", README) + re.findall(r"(tests/bench/\w+\.py)", README):
        assert (ROOT / rel).exists(), rel


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]'" in ci and ".venv/bin/pytest" in ci
    assert "pip install -e '.[test]' && .venv/bin/pytest" in README
