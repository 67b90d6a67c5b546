"""Small helpers for the benchmark scripts: start a binary and wait for its
`listening on ADDR` line, and a minimal WebSocket client (RFC 6455 upgrade,
masked text frames out, frames in) over a plain socket."""

import base64
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time


def start(cmd, env=None):
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    addr = None
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on (\S+)", line)
        if m:
            addr = m.group(1)
            break
    if not addr:
        proc.kill()
        sys.exit(f"bench-e2e: {cmd[0]} did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, addr


def ws_connect(addr, token):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /api/v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, rest = buf.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        sys.exit(f"bench-e2e: upgrade refused: {head!r}")
    return s, rest


def ws_send(s, text):
    payload = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(payload)]) if len(payload) < 126 else bytes([0x81, 0xFE]) + struct.pack(">H", len(payload))
    s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def ws_frames(s, buf):
    while True:
        while len(buf) < 2:
            buf += s.recv(65536)
        n = buf[1] & 0x7F
        off = 2
        if n == 126:
            while len(buf) < 4:
                buf += s.recv(65536)
            n, off = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            while len(buf) < 10:
                buf += s.recv(65536)
            n, off = struct.unpack(">Q", buf[2:10])[0], 10
        while len(buf) < off + n:
            buf += s.recv(65536)
        yield buf[0] & 0x0F, buf[off:off + n], time.time_ns()
        buf = buf[off + n:]


