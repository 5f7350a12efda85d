"""The uplink acknowledges only what a server says it stored, and never follows a redirect."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.config import UplinkConfig
from agent.store import Store
from tests.agent.uplink_helpers import drain


class _Handler(BaseHTTPRequestHandler):
    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"")
    posts: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts.append(self.path)
        status, headers, body = self.answer
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"posts": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
    t.join()


def _sync(tmp_path: Path, url: str) -> tuple[str, int, str | None]:
    with Store.open(tmp_path / "s.db", gateway_id="gw") as store:
        store.append([{"type": "reading", "ts": 1_790_000_000.0, "time_quality": "synced", "sensor_id": "p",
                       "quantity": "temperature", "value": 5.0, "unit": "Cel"}])
        st = drain(store, UplinkConfig(url=url, read_timeout_s=5), "gw")
        return st.result, store.stats()["pending"], st.last_error


def test_a_200_that_is_not_the_protocols_answer_acknowledges_nothing(tmp_path: Path, server) -> None:
    url, handler = server
    handler.answer = (200, {"Content-Type": "text/html"}, b"<html>Welcome to the hotel Wi-Fi</html>")
    result, pending, error = _sync(tmp_path, url)
    assert (result, pending) == ("transient", 2) and "not acknowledged" in (error or "")


def test_a_redirect_is_reported_not_followed(tmp_path: Path, server) -> None:
    url, handler = server
    handler.answer = (302, {"Location": f"{url}/elsewhere"}, b"")
    result, pending, error = _sync(tmp_path, url)
    assert (result, pending) == ("transient", 2)
    assert "redirects to" in (error or "") and handler.posts == ["/v1/batches"]  # nothing sent on


def test_the_protocols_answer_acknowledges_the_batch(tmp_path: Path, server) -> None:
    url, handler = server
    handler.answer = (200, {"Content-Type": "application/json"}, b'{"stored": 2, "duplicates": 0}')
    assert _sync(tmp_path, url) == ("ok", 0, None)
