"""Small helpers for the benchmark scripts: start a binary and wait for its
`listening on ADDR` line, and a minimal WebSocket client (RFC 6455 upgrade,
masked text frames out, frames in) over a plain socket.

`ws_connect`/`ws_send`/`ws_frames` are the bare generator form the benchmarks
use; `WsClient` is the same client as an object, for scripts/soak: timeouts,
close codes, reading a bounded number of bytes (a slow reader), and raw
frames of any shape (a client that sends garbage)."""

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


def encode_frame(opcode, payload, fin=True, mask=True, rsv=0):
    """One frame; `mask=False` or `rsv` make the malformed frames a server
    must refuse."""
    first = (0x80 if fin else 0) | (rsv & 0x07) << 4 | (opcode & 0x0F)
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([first, mbit | n])
    elif n < 65536:
        head = bytes([first, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, mbit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    if n:
        k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")
    return head + key + payload


def ws_send(s, text):
    s.sendall(encode_frame(0x1, text.encode()))


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




class WsClosed(Exception):
    """The connection ended: `code` is the Close frame's code (None for an
    empty Close), or 1006 when it ended without one (EOF, reset, timeout of
    the close handshake)."""

    def __init__(self, code, reason=""):
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code
        self.reason = reason


class WsRefused(Exception):
    """The upgrade was answered with something other than 101."""

    def __init__(self, status, head):
        super().__init__(f"upgrade refused: {status}")
        self.status = status
        self.head = head


class WsClient:
    """A blocking WebSocket client over one socket. Pings from the server are
    answered with Pongs as they are read. `recv` returns (opcode, payload)
    of text/binary frames and raises WsClosed at the end."""

    def __init__(self, addr, token, timeout=10.0, rcvbuf=None, head=None):
        host, port = addr.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        try:
            s.connect((host, int(port)))
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(head or (f"GET /api/v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise WsRefused(0, buf)
                buf += chunk
        except BaseException:
            s.close()
            raise
        head_b, rest = buf.split(b"\r\n\r\n", 1)
        status = head_b.split(b"\r\n")[0].split(b" ")
        code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
        if code != 101:
            s.close()
            raise WsRefused(code, head_b + b"\r\n\r\n" + rest)
        self.sock = s
        self.buf = bytearray(rest)
        self.closed = None  # the WsClosed once seen
        self.sent_close = False
        self.bytes_in = 0

    # -- sending
    def send(self, text):
        self.sock.sendall(encode_frame(0x1, text.encode() if isinstance(text, str) else text))

    def send_frame(self, opcode, payload=b"", **kw):
        if opcode == 0x8:
            self.sent_close = True
        self.sock.sendall(encode_frame(opcode, payload, **kw))

    def send_raw(self, data):
        self.sock.sendall(data)

    def ping(self, payload=b""):
        self.send_frame(0x9, payload)

    # -- reading
    def _frame(self):
        """Pops one complete frame from the buffer: (fin, opcode, payload) or None."""
        b = self.buf
        if len(b) < 2:
            return None
        n = b[1] & 0x7F
        off = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, off = struct.unpack_from(">H", b, 2)[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, off = struct.unpack_from(">Q", b, 2)[0], 10
        if len(b) < off + n:
            return None
        fin, op, payload = bool(b[0] & 0x80), b[0] & 0x0F, bytes(b[off:off + n])
        del b[:off + n]
        return fin, op, payload

    def fill(self, max_bytes=65536):
        """Reads at most max_bytes more from the socket (blocking up to the
        socket timeout). Raises WsClosed(1006) at EOF or on an error."""
        try:
            chunk = self.sock.recv(max_bytes)
        except socket.timeout:
            raise
        except OSError as e:
            self._end(1006, str(e))
        if not chunk:
            self._end(1006, "eof")
        self.bytes_in += len(chunk)
        self.buf += chunk

    def _end(self, code, reason=""):
        self.closed = WsClosed(code, reason)
        raise self.closed

    def poll(self):
        """The next complete data frame already buffered, or None. Handles
        Ping (answers Pong), Pong, and Close (raises WsClosed)."""
        if self.closed:
            raise self.closed
        while True:
            f = self._frame()
            if f is None:
                return None
            fin, op, payload = f
            if op == 0x9:
                try:
                    self.send_frame(0xA, payload)
                except OSError:
                    pass
            elif op == 0xA:
                continue
            elif op == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                if not self.sent_close:  # answer a Close the server started
                    try:
                        self.send_frame(0x8, payload[:2])
                    except OSError:
                        pass
                self._end(code, payload[2:].decode("utf-8", "replace"))
            else:
                return op, payload

    def recv(self, timeout=None):
        """The next text/binary frame (opcode, payload); socket.timeout when
        none arrives within `timeout` (None: the socket's timeout)."""
        f = self.poll()
        if f is not None:
            return f
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            self.fill()
            f = self.poll()
            if f is not None:
                return f

    def expect(self, pred, timeout=5.0):
        """Reads until pred(opcode, payload) is true; returns that frame.
        socket.timeout after `timeout` seconds; WsClosed if the connection ends."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise socket.timeout("expect")
            op, payload = self.recv(left)
            if pred(op, payload):
                return op, payload

    def wait_close(self, timeout=5.0):
        """Reads (and discards) until the connection ends; returns the code."""
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.time()))
                try:
                    self.recv()
                except socket.timeout:
                    break
        except WsClosed as e:
            return e.code
        return None

    # -- ending
    def close(self, code=1000, timeout=2.0):
        """A clean close: Close frame, wait for the echo, then the socket."""
        try:
            self.send_frame(0x8, struct.pack(">H", code))
            got = self.wait_close(timeout)
        except OSError:
            got = None
        self.sock.close()
        return got

    def abort(self, rst=True):
        """Drops the TCP connection without a Close frame (RST when `rst`)."""
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()
