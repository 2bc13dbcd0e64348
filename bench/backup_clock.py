#!/usr/bin/env python3
"""bench/backup_clock.py - the timed part of bench/backup.sh, in one process.

Both sides of the full-backup comparison are timed by this one process with one
clock (time.monotonic), the same way: no process is forked inside either clock but
the one under test (qemu-img), and the order alternates run by run (odd runs
convert first, even runs Kumo first), so neither side always meets a warmer or a
colder page cache. Each side's clock stops once its copy is durable:

  - convert: `qemu-img convert -O qcow2 DISK COPY`, then fsync of COPY and of its
    directory (what a careful copy does before it says "done");
  - Kumo: POST /api/v1/instances/VM/backups, then GET /api/v1/operations/ID?wait=30
    until it succeeded (the agent made the chunks durable, then the manifest, and the
    controller committed the backup's row), over one kept-alive HTTPS connection.

Then the live part (the VM running): a full, and N times 10 MiB written through
QEMU's block layer followed by an incremental. Each backup prints the client's time,
the agent's own duration (result.backup.duration_ms: from its taking the command to
its answer) and its timings (result.backup.timings).

  bench/backup_clock.py RUNS VM DISK COPY STORE_PREFIX MONITOR_SOCKET
  environment: KUMO_URL, KUMO_CACERT, KUMO_TOKEN_FILE (deploy/lab env);
  BENCH_KEY: 64 hex digits to make every store encrypted (empty: plain);
  BENCH_SCATTER: non-empty to add N incrementals after 10 MiB written as 2,560 writes of
  4 KiB spread over the disk (the price of one bitmap bit per 4 MiB chunk)
"""
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.parse


class Api:
    """One kept-alive HTTPS connection to the controller (reopened if it drops)."""

    def __init__(self, url, ca, token):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.headers = {"Authorization": "Bearer " + token,
                        "Content-Type": "application/json"}
        self.conn = None

    def call(self, method, path, body=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port,
                                                        context=self.ctx, timeout=120)
            try:
                self.conn.request(method, path,
                                  None if body is None else json.dumps(body),
                                  self.headers)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, (json.loads(data) if data else None)
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        return None

    def op_wait(self, op_id):
        while True:
            status, o = self.call("GET", "/api/v1/operations/%s?wait=30" % op_id)
            if status != 200:
                sys.exit("bench: operation %s: HTTP %d %s" % (op_id, status, o))
            if o["status"] == "succeeded":
                return o
            if o["status"] in ("failed", "cancelled"):
                sys.exit("bench: operation %s: %s" % (op_id, o.get("error")))

    def op_run(self, method, path, body=None):
        status, o = self.call(method, path, body)
        if status != 202:
            sys.exit("bench: %s %s: HTTP %d %s" % (method, path, status, o))
        return self.op_wait(o["id"])


def ms_since(t0):
    return (time.monotonic() - t0) * 1000.0


def convert(disk, copy):
    """qemu-img convert of disk into copy, made durable: its time in ms."""
    try:
        os.unlink(copy)
    except FileNotFoundError:
        pass
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", disk, copy], check=True)
    fd = os.open(copy, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    fd = os.open(os.path.dirname(copy), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
    return ms_since(t0)


def store_make(api, name, key):
    body = {"name": name}
    if key:
        body["encryption_key"] = key
    status, o = api.call("POST", "/api/v1/backup-stores", body)
    if status != 201:
        sys.exit("bench: store %s: HTTP %d %s" % (name, status, o))


def backup(api, vm, store, mode):
    """One backup through the API: (client ms, result.backup)."""
    t0 = time.monotonic()
    o = api.op_run("POST", "/api/v1/instances/%s/backups" % vm,
                   {"store": store, "mode": mode})
    return ms_since(t0), o["result"]["backup"]


def qemu_io(sock_path, writes):
    """Each (pattern, offset, length) of writes into the running disk, through QEMU's
    block layer (HMP qemu-io), one command each over one monitor connection."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    f = s.makefile("rw")
    f.readline()
    cmds = [("qmp_capabilities", {})]
    for pattern, off, length in writes:
        line = ('qemu-io -d /machine/peripheral/disk0/virtio-backend "write -P 0x%02x %d %d"'
                % (pattern, off, length))
        cmds.append(("human-monitor-command", {"command-line": line}))
    for cmd, args in cmds:
        f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
        f.flush()
        while True:
            m = json.loads(f.readline())
            if "return" in m or "error" in m:
                # HMP answers its errors as text; qemu-io's "wrote ..." line is success.
                if "error" in m or (isinstance(m["return"], str) and m["return"]
                                    and "wrote" not in m["return"]):
                    sys.exit("bench: " + json.dumps(m))
                break
    s.close()


def write_10m(sock_path, mib):
    """10 MiB at mib MiB into the running disk: 1% of it, in one place."""
    qemu_io(sock_path, [(0x5a, mib << 20, 10 << 20)])


SCATTER_WRITES = 2560  # of 4 KiB: the same 10 MiB, spread over the whole disk


def write_scattered(sock_path, size, pattern):
    """2,560 writes of 4 KiB spread evenly over a disk of size bytes (10 MiB in all)."""
    step = size // SCATTER_WRITES
    qemu_io(sock_path, [(pattern, (i * step) & ~4095, 4096) for i in range(SCATTER_WRITES)])


def described(b):
    return "agent %d ms, %d read, %d new, timings %s" % (
        b.get("duration_ms", -1), b["read_bytes"], b["new_bytes"],
        json.dumps(b.get("timings", {}), separators=(",", ":")))


def main():
    runs = int(sys.argv[1])
    vm, disk, copy, prefix, monitor = sys.argv[2:7]
    key = os.environ.get("BENCH_KEY", "")
    with open(os.environ["KUMO_TOKEN_FILE"]) as f:
        token = f.read().strip()
    api = Api(os.environ["KUMO_URL"], os.environ["KUMO_CACERT"], token)

    conv, kumo, ratios, first = [], [], [], None
    for i in range(1, runs + 1):
        store = "%s-%d" % (prefix, i)
        store_make(api, store, key)
        convert_first = i % 2 == 1
        if convert_first:
            c = convert(disk, copy)
        k, b = backup(api, vm, store, "full")
        if not convert_first:
            c = convert(disk, copy)
        conv.append(c)
        kumo.append(k)
        ratios.append(k / c)
        first = first or b
        print("run %d (%s first): qemu-img convert %.0f ms; kumo full %.0f ms (%s); "
              "ratio %.2f" % (i, "convert" if convert_first else "kumo", c, k, described(b),
                              k / c), flush=True)
    # A second full into the first store: its chunks are all there already.
    ms2, b2 = backup(api, vm, "%s-1" % prefix, "full")

    # Live: running, a full, then N times 1% written and an incremental.
    api.op_run("POST", "/api/v1/instances/%s/actions/start" % vm)
    store_make(api, "%s-0" % prefix, key)
    lf, lb = backup(api, vm, "%s-0" % prefix, "full")
    print("live full: %.0f ms, via %s, %s" % (lf, lb.get("live_read", "-"), described(lb)),
          flush=True)
    incr, agent_incr, last = [], [], None
    for i in range(1, runs + 1):
        write_10m(monitor, 90 + 10 * i)
        ms, b = backup(api, vm, "%s-0" % prefix, "auto")
        incr.append(ms)
        agent_incr.append(b.get("duration_ms", 0))
        last = b
        print("incremental %d: %s %.0f ms (%s)" % (i, b["kind"], ms, described(b)), flush=True)

    # --scatter: the same 1% in 2,560 writes of 4 KiB spread over the disk. A dirty
    # bitmap bit covers a 4 MiB chunk, so the incremental copies every chunk a write
    # touched, whole: the price of 4 MiB bits, measured.
    scat = []
    for i in range(1, runs + 1 if os.environ.get("BENCH_SCATTER") else 1):
        write_scattered(monitor, lb["total_bytes"], 0x20 + i)
        ms, b = backup(api, vm, "%s-0" % prefix, "auto")
        if b["kind"] != "incremental":
            sys.exit("bench: the scattered backup %d is %s (%s), not incremental: its bytes "
                     "would not be the price of 4 MiB bits" % (i, b["kind"], b.get("full_reason", "")))
        scat.append((ms, b))
        print("scattered incremental %d: %s %.0f ms (%s)" % (i, b["kind"], ms, described(b)),
              flush=True)

    print("stores: %s" % ("encrypted (AES-256-GCM)" if key else "plain"))
    km, cm = statistics.median(kumo), statistics.median(conv)
    tot, nw = first["total_bytes"], first["new_bytes"]
    print("full backup (median of runs): kumo %.0f ms, qemu-img convert %.0f ms, ratio %.2f "
          "(goal <= 1.25); paired ratios %s, median %.2f" % (
              km, cm, km / cm, " ".join("%.2f" % r for r in ratios),
              statistics.median(ratios)))
    print("throughput: kumo %.0f MB/s, convert %.0f MB/s (of the 1 GiB disk)" % (
        tot / km / 1000, tot / cm / 1000))
    print("dedup: %d logical bytes stored as %d new chunk bytes (%.1fx); a second full "
          "stored %d new bytes in %.0f ms" % (tot, nw, tot / (nw or 1), b2["new_bytes"], ms2))
    im = statistics.median(incr)
    print("live: full %.0f ms (%d read, via %s); %s after 1%% written (median of runs): "
          "%.0f ms (agent's part %.0f ms; last: %d read, %d new), %.1f%% of the full "
          "(goal <= 5%%)" % (lf, lb["read_bytes"], lb.get("live_read", "-"), last["kind"], im,
                             statistics.median(agent_incr), last["read_bytes"],
                             last["new_bytes"], 100 * im / lf))
    if scat:
        sm = statistics.median(ms for ms, _ in scat)
        b = scat[-1][1]
        print("scattered: 10 MiB in %d writes of 4 KiB over the disk (median of runs): "
              "%.0f ms, %.1f%% of the live full; last: %d read, %d new (%.0fx and %.0fx "
              "the bytes written)" % (SCATTER_WRITES, sm, 100 * sm / lf, b["read_bytes"],
                                      b["new_bytes"], b["read_bytes"] / (10 << 20),
                                      b["new_bytes"] / (10 << 20)))


if __name__ == "__main__":
    main()
