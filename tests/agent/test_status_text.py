"""What `coldgate status` says of an agent in each phase of its life."""

from __future__ import annotations

from agent.status import render


def base(**over: object) -> dict[str, object]:
    return {"running": True, "answering": True, "pid": 4242, "gateway_id": "gw", "clock": {},
            "started_at": "2026-12-01T10:00:00.000Z", **over}


def test_an_agent_still_opening_its_store_and_drivers_is_shown_starting_not_running() -> None:
    text = render(base(ready=False))
    assert "starting (pid 4242" in text
    assert "running (pid" not in text


def test_a_ready_agent_is_shown_running_with_its_pid() -> None:
    text = render(base(ready=True))
    assert "running (pid 4242)" in text
    assert "starting" not in text.split("\n")[0]
