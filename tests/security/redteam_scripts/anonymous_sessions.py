"""R12: N anonymous dashboard sessions (websocket + one rerun request each, no sign-in), then the dashboard's
RSS and /_stcore/health latency.

    python tests/security/redteam_scripts/anonymous_sessions.py PORT DASHBOARD_PID N
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request

import psutil
import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg

port, pid, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
proc = psutil.Process(pid)


async def session(open_sockets: list[websockets.ClientConnection]) -> None:
    url = f"ws://127.0.0.1:{port}/_stcore/stream"
    ws = await websockets.connect(url, subprotocols=["streamlit"], max_size=None, open_timeout=60)
    message = BackMsg()
    message.rerun_script.query_string = ""
    await ws.send(message.SerializeToString())
    open_sockets.append(ws)


async def main() -> None:
    before = proc.memory_info().rss / 2**20
    open_sockets: list[websockets.ClientConnection] = []
    started = time.monotonic()
    for first in range(0, count, 50):
        await asyncio.gather(*(session(open_sockets) for _ in range(first, min(count, first + 50))))
    await asyncio.sleep(5)
    ping = time.monotonic()
    urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=60).read()
    print(f"{len(open_sockets)} sessions in {time.monotonic() - started:.0f}s: RSS {before:.0f} -> "
          f"{proc.memory_info().rss / 2**20:.0f} MB, /health {time.monotonic() - ping:.2f}s")  # fmt: skip
    for ws in open_sockets:
        await ws.close()


asyncio.run(main())
