#!/usr/bin/env python3
"""bench/console_latency.py - keystroke echo latency through the dashboard's terminal path.

Opens a running VM's serial console WebSocket (GET /api/v1/instances/NAME/console/ws,
the token as a subprotocol, as the page does) and measures, at the guest's shell prompt:

  - single keys: one key per WebSocket message, the next once the previous one's echo
    is back; the median, min and max of N;
  - a burst: N keys as N WebSocket messages written at once (fast typing, a paste in a
    terminal that sends per key); the time until the last one's echo is back.

Each key travels browser -> controller -> agent -> QEMU's serial socket -> the guest's
line editor, and its echo back the same way. Ctrl-U clears the line after each round.
The guest must be at a busybox shell prompt (the test image: tests/guest).

  bench/console_latency.py URL CACERT TOKEN VM [N]
  (deploy/lab env gives URL, CACERT; the token file holds an admin token)
"""
import socket
import ssl
import statistics
import sys
import time
import urllib.parse


def ws_connect(url, ca, token, vm):
    u = urllib.parse.urlparse(url)
    ctx = ssl.create_default_context(cafile=ca)
    s = ctx.wrap_socket(socket.create_connection((u.hostname, u.port)), server_hostname=u.hostname)
    s.sendall((f"GET /api/v1/instances/{vm}/console/ws HTTP/1.1\r\nHost: {u.netloc}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Sec-WebSocket-Protocol: kumo, kumo.token.{token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise SystemExit(f"no WebSocket: {head.decode(errors='replace')}")
    s.settimeout(30)
    return s


def frame(data):
    # A client's frame: FIN, binary, masked (a zero mask keeps the bytes as they are).
    return bytes([0x82, 0x80 | len(data)]) + b"\0\0\0\0" + data


class Reader:
    """What the guest wrote, from the server's (unmasked) frames."""

    def __init__(self, s):
        self.s, self.buf, self.text = s, b"", b""

    def pump(self):
        self.buf += self.s.recv(65536)
        while len(self.buf) >= 2:
            n, off = self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, off = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, off = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < off + n:
                return
            if self.buf[0] & 0x0F == 0x2:
                self.text += self.buf[off:off + n]
            self.buf = self.buf[off + n:]

    def until(self, ch, count):
        while self.text.count(ch) < count:
            self.pump()


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    url, ca, token, vm = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    s = ws_connect(url, ca, token, vm)
    r = Reader(s)
    s.sendall(frame(b"\x15"))  # Ctrl-U: an empty line to start from
    time.sleep(1)
    r.text = b""
    single = []
    for _ in range(n):
        want = r.text.count(b"q") + 1
        t0 = time.monotonic()
        s.sendall(frame(b"q"))
        r.until(b"q", want)
        single.append((time.monotonic() - t0) * 1000)
    s.sendall(frame(b"\x15"))
    want = r.text.count(b"z") + n
    t0 = time.monotonic()
    s.sendall(b"".join(frame(b"z") for _ in range(n)))
    r.until(b"z", want)
    burst = (time.monotonic() - t0) * 1000
    s.sendall(frame(b"\x15"))
    print(f"console latency: single key median {statistics.median(single):.1f} ms of {n} "
          f"(min {min(single):.1f}, max {max(single):.1f}); burst of {n} keys {burst:.1f} ms")


main()
