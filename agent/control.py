"""The one control channel between the CLI and the running agent: a Unix socket.

The daemon listens on ``[control] socket`` (default ``/run/coldgate/control.sock``, in
systemd's ``RuntimeDirectory=``: tmpfs, nothing written to the SD card), mode 0660 so
that the service's group may use it. One request per connection, one JSON line each
way::

    → {"cmd": "status"}
    ← {"ok": true, "result": {...}}
    ← {"ok": false, "error": "no active alarm 'x'", "kind": "ControlRefused"}

Commands (see :mod:`agent.daemon` for what each does): ``ping``, ``status``, ``sync``
(a pass now, answered with its result), ``apply`` (a candidate config: answered with
the agent's verdict), ``reload``, ``alarm_ack``, ``retry_set_aside``, and the shipment
commands. Signals stay as aliases for systemd (``SIGHUP`` reloads, ``SIGUSR1`` syncs),
but the CLI never signals a process: it only talks to whoever answers on the socket the
config names.

:class:`ControlClient` raises :class:`~agent.exc.AgentNotRunning` when nothing listens
(no socket, or a stale one after a crash), :class:`~agent.exc.AgentNotAnswering` when
the agent accepted the connection but did not answer in time (frozen, ``SIGSTOP``,
overloaded), and :class:`~agent.exc.ControlRefused` with the agent's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from agent.exc import AgentNotAnswering, AgentNotRunning, ColdgateError, ControlRefused

log = logging.getLogger("coldgate.control")

MAX_REQUEST = 1 << 20
Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]


class ControlServer:
    """Serves ``handlers`` (``{cmd: async fn(request) -> JSON-able result}``) on ``path``."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler], *, mode: int = 0o660) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.mode = mode
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Bind the socket; refuse when another agent answers on it; replace a stale one."""
        path = self.path
        if len(os.fsencode(path)) > 107:
            raise ColdgateError(f"control socket path too long for a Unix socket (max 107 bytes): {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                if await asyncio.to_thread(_answers, path):
                    raise ColdgateError(f"another coldgate already runs: it answers on {path}")
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # left by an agent that was killed
            old_umask = os.umask(0o117)  # the socket is created 0660 at once, never wider
            try:
                self._server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_REQUEST)
            finally:
                os.umask(old_umask)
            os.chmod(path, self.mode)
        except OSError as exc:
            raise ColdgateError(f"cannot create the control socket {path}: {exc.strerror or exc} "
                                "(under systemd it lives in RuntimeDirectory=coldgate; else set [control] socket)"
                                ) from exc

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10.0)
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError("a request is a JSON object with a 'cmd'")
            except (ValueError, asyncio.LimitOverrunError, TimeoutError) as exc:
                answer: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}", "kind": "ControlRefused"}
            else:
                answer = await self._dispatch(request)
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to tell
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _dispatch(self, request: Mapping[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        handler = self.handlers.get(cmd)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r} (known: {', '.join(sorted(self.handlers))})",
                    "kind": "ControlRefused"}
        try:
            return {"ok": True, "result": await handler(request)}
        except ColdgateError as exc:
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - a failed command must not take the agent down
            log.exception("control command %s failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {type(exc).__name__}: {exc}", "kind": "ControlError"}


def _answers(path: Path) -> bool:
    """Whether an agent listens on ``path`` (a stale socket refuses the connection)."""
    try:
        ControlClient(path, timeout=2.0).request("ping")
    except AgentNotRunning:
        return False
    except ColdgateError:
        return True  # something listens, even if it did not answer well
    return True


class ControlClient:
    """The CLI's side: ``ControlClient(path).request("status")``."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, cmd: str, *, wait: float | None = None, **args: Any) -> Any:
        """Send one request; the agent's result, or raise (see the module docstring).

        ``wait`` overrides the client's timeout for this request (seconds).
        """
        wait = self.timeout if wait is None else wait
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(wait, 5.0))
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise AgentNotRunning(f"the agent is not running (nothing answers on {self.path})") from exc
            except PermissionError as exc:
                raise ControlRefused(f"permission denied on {self.path}: run as root or as a member of the "
                                     "service's group") from exc
            except TimeoutError as exc:
                raise AgentNotAnswering(f"the agent does not accept connections on {self.path}") from exc
            sock.settimeout(wait)
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except TimeoutError as exc:
                raise AgentNotAnswering(
                    f"the agent accepted the connection on {self.path} but did not answer within {wait:g} s "
                    "(frozen, stopped or overloaded)") from exc
        except OSError as exc:
            raise AgentNotAnswering(f"talking to the agent on {self.path} failed: {exc}") from exc
        finally:
            sock.close()
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise AgentNotAnswering(f"the agent's answer on {self.path} is not JSON ({data[:80]!r})") from exc
        if not answer.get("ok"):
            raise ControlRefused(str(answer.get("error") or "refused"), kind=answer.get("kind"))
        return answer.get("result")


__all__ = ["ControlClient", "ControlServer"]
