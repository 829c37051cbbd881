"""R5: RSS of a running API (`python -m services api`) while one POST /ocr body of SIZE_MB is sent.

python tests/security/redteam_scripts/ocr_body_memory.py PORT API_PID TOKEN SIZE_MB multipart|json
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import psutil

port, pid, token, size_mb, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
proc = psutil.Process(pid)
samples = [proc.memory_info().rss / 2**20]
done = threading.Event()


def watch() -> None:
    while not done.is_set():
        samples.append(proc.memory_info().rss / 2**20)
        time.sleep(0.02)


threading.Thread(target=watch, daemon=True).start()
if kind == "json":
    head, tail, ctype = b'{"image":"', b'"}', "application/json"
else:
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    tail, ctype = b"\r\n--b--\r\n", "multipart/form-data; boundary=b"
size = size_mb * 2**20
sock = socket.create_connection(("127.0.0.1", port))
sock.sendall(
    f"POST /ocr HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {ctype}\r\n"
    f"Content-Length: {len(head) + size + len(tail)}\r\n\r\n".encode()
)
sock.sendall(head)
for _ in range(size_mb):
    sock.sendall(b"A" * 2**20)
sock.sendall(tail)
answer = sock.recv(4096).split(b"\r\n", 1)[0].decode()
done.set()
print(f"{kind} {size_mb} MB: {answer}; RSS {samples[0]:.0f} MB, peak {max(samples):.0f} MB")
