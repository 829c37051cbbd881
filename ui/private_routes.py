"""What a shared server must not tell anonymous clients, as ASGI middleware for the dashboard's `st.App`
(dashboard.py), which runs before Streamlit's own routes:

- `/_stcore/metrics`, which Streamlit 1.67 serves to anyone with no setting to turn it off, answers 404,
  except to clients inside `metrics_networks` (a monitoring scraper an administrator lists; none by default);
- the session-start message no longer tells every browser, signed in or not, where the app lives on the
  server (Streamlit puts the script's absolute path in it): it carries the file name only.

Behind a reverse proxy, block the metrics path there as well (SECURITY.md).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from google.protobuf.message import DecodeError
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

HIDDEN_PATHS = ("/_stcore/metrics",)
APP_DIR = str(Path(__file__).resolve().parent.parent).encode()  # the checkout holding app.py


class HideInternalRoutes:
    """404 for Streamlit's internal routes that must not be public (with or without a base URL path), unless
    the client's address is inside one of `networks` (default: the `metrics_networks` setting)."""

    def __init__(self, app: ASGIApp, networks: list[str] | None = None) -> None:
        self.app = app
        if networks is None:
            from services.core.settings import load_settings

            networks = load_settings().metrics_networks
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def _allowed(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hidden = scope["type"] == "http" and scope["path"].rstrip("/").endswith(HIDDEN_PATHS)
        if hidden and not self._allowed(scope):
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class HideScriptPath:
    """Rewrites the websocket's session-start message so the main script path is its file name only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return

        async def send_without_path(message: Message) -> None:
            data = message.get("bytes")
            if message["type"] == "websocket.send" and data and APP_DIR in data:
                message = {**message, "bytes": without_script_path(data)}
            await send(message)

        await self.app(scope, receive, send_without_path)


def without_script_path(data: bytes) -> bytes:
    """A serialized ForwardMsg with `new_session.main_script_path` cut to the file name (others unchanged)."""
    msg = ForwardMsg()
    try:
        msg.ParseFromString(data)
    except DecodeError:  # not a ForwardMsg: pass it on untouched
        return data
    if not msg.HasField("new_session"):
        return data
    msg.new_session.main_script_path = Path(msg.new_session.main_script_path).name
    result: bytes = msg.SerializeToString()
    return result
