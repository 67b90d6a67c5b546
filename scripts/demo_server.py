#!/usr/bin/env python3
"""A stand-in Minecraft server for the demo: writes logs/latest.log as a
vanilla server does (start-up, players, chat, a crash with a stack trace and a
crash report, a restart with log rotation, a clean stop), keeps a pid file
naming a live process while it "runs", and answers the Server List Ping on a
local port so the agent can count players.

Usage: demo_server.py DIR [--port 25565] [--cycle-seconds 45]
                      [--rate LINES_PER_S] [--burst LINES] [--burst-every SECONDS]
                      [--line-bytes N] [--crash-loop] [--restart-seconds 6]

--rate adds that many numbered filler lines per second while the server runs
(`soak N ...`, N counting up from 1 across restarts, padded to about
--line-bytes), on top of the story; --burst writes that many at once every
--burst-every seconds (the first burst right after the first start). Filler
lines never split a stack trace. Used by scripts/soak.
--crash-loop ends every cycle in a crash instead of alternating crashes and
clean stops; --restart-seconds is the pause before each restart (the hub's
alert tests run a crash loop with short cycles).
Stops on SIGTERM/SIGINT. Everything stays under DIR and on 127.0.0.1.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

PLAYERS = ["Steve", "Alex", "Notch", "jeb_", "Dinnerbone"]
online = []  # players online, read by the Server List Ping thread
running = True


def stamp():
    return time.strftime("%H:%M:%S")


class Server:
    def __init__(self, root):
        self.root = root
        self.logs = os.path.join(root, "logs")
        self.crash = os.path.join(root, "crash-reports")
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(self.crash, exist_ok=True)
        self.pid_file = os.path.join(root, "server.pid")
        self.proc = None
        self.log = None
        # Held for each write, across a whole stack trace, and by the filler
        # thread, so filler lines never land inside a multi-line entry.
        self.lock = threading.RLock()
        self.filler_n = 0

    def write(self, thread, level, msg, pause=0.15):
        with self.lock:
            self.log.write(f"[{stamp()}] [{thread}/{level}]: {msg}\n")
            self.log.flush()
        sleep(pause)

    def raw(self, line):
        with self.lock:
            self.log.write(line + "\n")
            self.log.flush()

    def filler(self, count, line_bytes):
        """Writes `count` numbered filler lines if the server runs."""
        with self.lock:
            if self.proc is None or self.log is None:
                return
            out = []
            for _ in range(count):
                self.filler_n += 1
                head = f"[{stamp()}] [Server thread/INFO]: soak {self.filler_n} "
                out.append(head + "x" * max(0, line_bytes - len(head)) + "\n")
            self.log.write("".join(out))
            self.log.flush()

    def rotate(self):
        with self.lock:
            self._rotate()

    def _rotate(self):
        latest = os.path.join(self.logs, "latest.log")
        if os.path.exists(latest):
            n = 1
            while os.path.exists(os.path.join(self.logs, f"{time.strftime('%Y-%m-%d')}-{n}.log")):
                n += 1
            os.rename(latest, os.path.join(self.logs, f"{time.strftime('%Y-%m-%d')}-{n}.log"))
        self.log = open(latest, "a", encoding="utf-8")

    def start(self):
        self.rotate()
        # The "java" process: alive while the server runs, so the agent sees
        # a real pid with real CPU and memory figures.
        self.proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(60)"])
        with open(self.pid_file, "w", encoding="utf-8") as f:
            f.write(f"{self.proc.pid}\n")
        w = self.write
        w("main", "INFO", "Environment: Environment[sessionHost=https://sessionserver.mojang.com]")
        w("Server thread", "INFO", "Starting minecraft server version 1.20.1")
        w("Server thread", "INFO", "Loading properties")
        w("Server thread", "INFO", "Default game type: SURVIVAL")
        w("Server thread", "INFO", "Generating keypair")
        w("Server thread", "INFO", "Starting Minecraft server on *:25565")
        w("Server thread", "INFO", "Preparing level \"world\"")
        for pct in (0, 18, 57, 83, 100):
            w("Worker-Main-1", "INFO", f"Preparing spawn area: {pct}%", 0.3)
        w("Server thread", "INFO", "Time elapsed: 2913 ms")
        w("Server thread", "INFO", 'Done (3.412s)! For help, type "help"')

    def play(self, seconds):
        end = time.time() + seconds
        while running and time.time() < end:
            roll = random.random()
            if roll < 0.25 and len(online) < len(PLAYERS):
                p = random.choice([p for p in PLAYERS if p not in online])
                online.append(p)
                self.write("User Authenticator #1", "INFO", f"UUID of player {p} is {random_uuid()}", 0)
                self.write("Server thread", "INFO", f"{p} joined the game", 0)
            elif roll < 0.35 and online:
                p = online.pop(random.randrange(len(online)))
                self.write("Server thread", "INFO", f"{p} lost connection: Disconnected", 0)
                self.write("Server thread", "INFO", f"{p} left the game", 0)
            elif roll < 0.75 and online:
                p = random.choice(online)
                self.write("Async Chat Thread - #0", "INFO", f"<{p}> {random.choice(CHAT)}", 0)
            elif roll < 0.85:
                self.write("Server thread", "WARN",
                           f"Can't keep up! Is the server overloaded? Running {random.randint(2100, 5200)}ms or "
                           f"{random.randint(42, 104)} ticks behind", 0)
            else:
                self.write("Server thread", "INFO", "[Server] Remember to vote for the server!", 0)
            sleep(random.uniform(0.8, 2.5))

    def crash_now(self):
        with self.lock:
            self.write("Server thread", "ERROR", "Encountered an unexpected exception", 0)
            for line in TRACE:
                self.raw(line)
        report = os.path.join(self.crash, f"crash-{time.strftime('%Y-%m-%d_%H.%M.%S')}-server.txt")
        with open(report, "w", encoding="utf-8") as f:
            f.write("---- Minecraft Crash Report ----\n// Surprise! Haha. Well, this is awkward.\n\n")
            f.write("Description: Exception in server tick loop\n\n" + "\n".join(TRACE) + "\n")
        self.write("Server thread", "ERROR", f"This crash report has been saved to: {report}", 0)
        self.kill()

    def stop(self):
        w = self.write
        w("Server thread", "INFO", "Stopping the server")
        w("Server thread", "INFO", "Stopping server")
        w("Server thread", "INFO", "Saving players")
        for p in list(online):
            w("Server thread", "INFO", f"{p} lost connection: Server closed", 0.05)
        online.clear()
        w("Server thread", "INFO", "Saving worlds")
        w("Server thread", "INFO", "Saving chunks for level 'ServerLevel[world]'/minecraft:overworld")
        w("Server thread", "INFO", "ThreadedAnvilChunkStorage (world): All chunks are saved")
        w("Server thread", "INFO", "ThreadedAnvilChunkStorage: All dimensions are saved")
        self.kill()

    def kill(self):
        online.clear()
        with self.lock:
            proc, self.proc = self.proc, None
        if proc:
            proc.kill()
            proc.wait()
        if os.path.exists(self.pid_file):
            os.remove(self.pid_file)


CHAT = ["anyone got diamonds?", "brb", "gg", "who took my horse", "lag?", "nice build!", "where is spawn"]
TRACE = [
    "java.lang.NullPointerException: Cannot invoke \"net.minecraft.world.entity.Entity.tick()\" because \"entity\" is null",
    "\tat net.minecraft.server.level.ServerLevel.tickNonPassenger(ServerLevel.java:693)",
    "\tat net.minecraft.world.level.Level.guardEntityTick(Level.java:479)",
    "\tat net.minecraft.server.MinecraftServer.tickServer(MinecraftServer.java:893)",
    "Caused by: java.lang.IllegalStateException: Entity is already tracked!",
    "\tat net.minecraft.server.level.ChunkMap.addEntity(ChunkMap.java:1082)",
    "\t... 12 more",
]


def random_uuid():
    import uuid
    return str(uuid.uuid4())


def sleep(seconds):
    end = time.time() + seconds
    while running and time.time() < end:
        time.sleep(min(0.2, max(0.0, end - time.time())))


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def read_varint(conn):
    n = shift = 0
    while True:
        b = conn.recv(1)
        if not b:
            raise ConnectionError("closed")
        n |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return n
        shift += 7
        if shift > 35:
            raise ConnectionError("bad varint")


def read_packet(conn):
    length = read_varint(conn)
    data = b""
    while len(data) < length:
        chunk = conn.recv(length - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def serve_ping(port, srv):
    """Server List Ping (handshake, status request, ping) on 127.0.0.1:port."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(8)
    lsock.settimeout(0.5)
    while running:
        try:
            conn, _ = lsock.accept()
        except socket.timeout:
            continue
        with conn:
            conn.settimeout(2)
            try:
                read_packet(conn)  # handshake
                if srv.proc is None:
                    continue  # server down: no answer, as a stopped server
                read_packet(conn)  # status request
                status = {
                    "version": {"name": "1.20.1", "protocol": 763},
                    "players": {"max": 20, "online": len(online)},
                    "description": {"text": "aymc demo server"},
                }
                body = json.dumps(status).encode()
                payload = varint(0) + varint(len(body)) + body
                conn.sendall(varint(len(payload)) + payload)
                ping = read_packet(conn)
                conn.sendall(varint(len(ping)) + ping)
            except (ConnectionError, OSError):
                pass


def feed(srv, rate, burst, burst_every, line_bytes):
    """The filler thread: `rate` lines/s, and `burst` lines every `burst_every` s."""
    start = time.time()
    written = 0
    next_burst = None
    while running:
        now = time.time()
        if burst and srv.proc is not None and (next_burst is None or now >= next_burst):
            srv.filler(burst, line_bytes)
            next_burst = now + burst_every
        if rate:
            due = int((now - start) * rate) - written
            if due > 0:
                # While the server is down nothing is written, and nothing is owed.
                srv.filler(min(due, max(1, int(rate))), line_bytes)
                written += due
        time.sleep(0.05)


def main():
    global running
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--port", type=int, default=25565)
    ap.add_argument("--cycle-seconds", type=float, default=45)
    ap.add_argument("--rate", type=float, default=0, help="filler lines per second while running")
    ap.add_argument("--burst", type=int, default=0, help="filler lines written at once every --burst-every s")
    ap.add_argument("--burst-every", type=float, default=60)
    ap.add_argument("--line-bytes", type=int, default=200, help="approximate length of a filler line")
    ap.add_argument("--crash-loop", action="store_true", help="end every cycle in a crash")
    ap.add_argument("--restart-seconds", type=float, default=6, help="pause before each restart")
    args = ap.parse_args()

    def stop(*_):
        global running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    srv = Server(args.dir)
    threading.Thread(target=serve_ping, args=(args.port, srv), daemon=True).start()
    if args.rate > 0 or args.burst > 0:
        threading.Thread(target=feed, args=(srv, args.rate, args.burst, args.burst_every, args.line_bytes),
                         daemon=True).start()
    crash_next = True
    while running:
        srv.start()
        srv.play(args.cycle_seconds)
        if not running:
            break
        if crash_next or args.crash_loop:
            srv.crash_now()
        else:
            srv.stop()
        crash_next = not crash_next
        sleep(args.restart_seconds)
    srv.kill()


if __name__ == "__main__":
    main()
