"""At most `sign_in.max_anonymous_sessions_per_address` sessions per client address that have not signed in,
on a dashboard with sign-in: ASGI middleware for the dashboard's `st.App` (dashboard.py), which sees the
websocket (`/_stcore/stream`) before Streamlit accepts it.

Every websocket is a Streamlit session that costs server memory before anyone signs in (the red team's 200
anonymous sessions took +105 MB and slowed /_stcore/health to 3.4 s), and the sign-in form is all such a
session can reach. A connection is counted from its handshake until the sign-in gate (ui/auth.py, through
ui/upload_gate.mark_session) marks its session signed in; the session id is read from the session's first
message (`new_session`). One connection over the limit is refused before it is accepted (HTTP 403 to the
handshake). Addresses are keyed like the sign-in throttle (IPv6 per /64; X-Forwarded-For only with
`sign_in.trusted_proxy_hops`). Signed-in sessions and an open workbench (no sign-in) are never limited.

Streamlit 1.67 has no setting for this, nor an idle timeout for sessions; closing an idle sign-in page would
only make the browser reconnect, so the bound is on how many are open at once. Behind a proxy, also use
`limit_conn` on /_stcore/stream (SECURITY.md). Plain `streamlit run app.py` runs without this middleware.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from services.core.sign_in_throttle import address_key, client_address
from ui.upload_gate import session_may_upload

log = logging.getLogger(__name__)

STREAM_PATH = "/_stcore/stream"
MESSAGES_READ_FOR_SESSION_ID = 20  # the session id comes in the first messages; later ones are not parsed


@dataclass
class _Connection:
    session_id: str | None = None
    seen: int = 0

    def signed_in(self) -> bool:
        return self.session_id is not None and session_may_upload(self.session_id)


class AnonymousSessionLimit:
    """Refuses a websocket when its address already holds `limit` open sessions that are not signed in."""

    def __init__(
        self, app: ASGIApp, limit: int | None = None, trusted_proxy_hops: int | None = None, enabled: bool | None = None
    ) -> None:
        if limit is None or trusted_proxy_hops is None or enabled is None:
            from services.core.settings import load_settings

            settings = load_settings()
            limit = settings.sign_in.max_anonymous_sessions_per_address if limit is None else limit
            hops = settings.sign_in.trusted_proxy_hops
            trusted_proxy_hops = hops if trusted_proxy_hops is None else trusted_proxy_hops
            if enabled is None:
                from ui.auth import sign_in_configured

                enabled = sign_in_configured(settings)
        self.app = app
        self.limit = limit
        self.hops = trusted_proxy_hops
        self.enabled = enabled and limit > 0
        self.open: dict[str, list[_Connection]] = {}

    def _address(self, scope: Scope) -> str:
        client = scope.get("client")
        forwarded = [v.decode("latin-1") for k, v in scope.get("headers") or [] if k.lower() == b"x-forwarded-for"]
        return address_key(client_address(client[0] if client else None, forwarded, self.hops))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "websocket" or not scope["path"].rstrip("/").endswith(STREAM_PATH):
            await self.app(scope, receive, send)
            return
        address = self._address(scope)
        connections = self.open.setdefault(address, [])
        anonymous = sum(1 for c in connections if not c.signed_in())
        if anonymous >= self.limit:
            log.warning("session refused: %s already has %d sessions that have not signed in", address, anonymous)
            await send({"type": "websocket.close", "code": 1008})  # before accept: a 403 to the handshake
            if not connections:
                self.open.pop(address, None)
            return
        connection = _Connection()
        connections.append(connection)

        async def reading_session_id(message: Message) -> None:
            data = message.get("bytes")
            if connection.session_id is None and data and connection.seen < MESSAGES_READ_FOR_SESSION_ID:
                connection.seen += 1
                connection.session_id = _session_id(data)
            await send(message)

        try:
            await self.app(scope, receive, reading_session_id)
        finally:
            connections.remove(connection)
            if not connections:
                self.open.pop(address, None)


def _session_id(data: bytes) -> str | None:
    """The session id of a serialized `new_session` ForwardMsg; None for any other message."""
    msg = ForwardMsg()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return None
    if msg.HasField("new_session") and msg.new_session.initialize.session_id:
        return str(msg.new_session.initialize.session_id)
    return None
