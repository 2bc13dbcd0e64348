#!/usr/bin/env python3
# Which of Kumo's QEMU options cost the copy of a live migration (issue 13): the same
# paused-first TLS migration as Kumo's under TCG without the post-copy grant (stop,
# migrate, completed, cont, quit), between bare QEMUs on loopback, driven by raw QMP,
# for variants of a Kumo VM's exact command line with one option group removed.
#
#   bench/migrate_argv.py ARGV.json IMAGE TLSDIR ROUNDS VARIANT[+VARIANT]...
#
# ARGV.json: a lab VM's command line as a JSON list, e.g.
#   python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().split("\0")[:-1]))' \
#     /proc/$(cat $KUMO_LAB_DIR/hosts/h1/local/instances/NAME/qemu.pid)/cmdline >argv.json
# (a migration target's is the same plus -incoming defer and its tls-creds-x509 object,
# which this adds). Its run directory and disk are replaced by this run's own (an
# overlay of IMAGE, the lab's kumo-test image), nothing else. TLSDIR holds
# ca-cert.pem, server-cert.pem/-key.pem, client-cert.pem/-key.pem (SAN 127.0.0.1) and
# dh-params.pem, as bench/migrate.sh makes them. Variants (v_* below): full (as is),
# novga (no VGA, no VNC), novnc, vga4/vga1 (vgamem_mb), bochs (bochs-display),
# nosandbox, norunas, noballoon, noqga, nomon2 (no second monitor), noconsole (serial to
# a file), drive (-drive cache=none instead of -blockdev), raw (bench/migrate.sh's bare
# command line), mfd (multifd, 2 channels or $MFD_CHANNELS); "a+b" applies both.
# Each variant keeps one guest, booted once and migrated on from QEMU to QEMU; rounds
# alternate the variants (rotated order) so a load drift hits all alike. Prints per
# migration QEMU's total-time, the wall time from migrate to completed, the source's
# and the target's CPU (utime+stime from /proc/PID/stat) over the copy and the MiB
# sent; then medians and each variant's median paired wall ratio against the first.
# Needs root (-runas), qemu-system-x86_64 and qemu-img. Uses loopback only.
import atexit, json, os, random, shutil, socket, subprocess, sys, tempfile, time

argv_file, image, tlsdir, rounds = sys.argv[1:5]
image, tlsdir = os.path.abspath(image), os.path.abspath(tlsdir)
variants = sys.argv[5:]
kumo = json.load(open(argv_file))
FLAGS = {"-no-shutdown", "-nodefaults", "-no-user-config", "-S"}
TICK = os.sysconf("SC_CLK_TCK")
base = tempfile.mkdtemp(prefix="kumo-migrate-argv.")
os.chmod(base, 0o755)
extra = os.environ.get("BISECT_EXTRA", "").split()


def pairs(av):
    out, i = [], 1
    while i < len(av):
        if av[i] in FLAGS:
            out.append((av[i], None)); i += 1
        else:
            out.append((av[i], av[i + 1])); i += 2
    return out


def rundir_of(pr):
    for o, v in pr:
        if o == "-pidfile":
            return os.path.dirname(v)


KDIR = rundir_of(pairs(kumo))


def drop(pr, pred):
    return [(o, v) for o, v in pr if not pred(o, v)]


def has(v, *words):
    return v is not None and any(w in v for w in words)


def v_full(pr): return pr
def v_novga(pr): return drop(pr, lambda o, v: o == "-vnc" or (o == "-device" and v.startswith("VGA")))
def v_vga4(pr): return [(o, v.replace("VGA,id=video0", "VGA,id=video0,vgamem_mb=4") if o == "-device" else v) for o, v in pr]
def v_novnc(pr): return drop(pr, lambda o, v: o == "-vnc")
def v_vga1(pr): return [(o, v.replace("VGA,id=video0", "VGA,id=video0,vgamem_mb=1") if o == "-device" else v) for o, v in pr]
def v_bochs(pr): return [(o, v.replace("VGA,id=video0", "bochs-display,id=video0") if o == "-device" else v) for o, v in pr]
def v_mfd(pr): return pr
def v_noballoon(pr): return drop(pr, lambda o, v: o == "-device" and v.startswith("virtio-balloon"))
def v_noqga(pr): return drop(pr, lambda o, v: has(v, "id=qga", "virtio-serial", "virtserialport"))
def v_nosandbox(pr): return drop(pr, lambda o, v: o == "-sandbox")
def v_norunas(pr): return drop(pr, lambda o, v: o == "-runas")
def v_nomon2(pr): return drop(pr, lambda o, v: has(v, "id=monitor", "chardev=monitor"))
def v_noconsole(pr):
    out = drop(pr, lambda o, v: has(v, "id=console,") or (o == "-serial"))
    return out + [("-serial", "file:@DIR@/console.log")]
def v_drive(pr):
    out, disk = [], None
    for o, v in pr:
        if o == "-blockdev" and '"qcow2"' in v:
            disk = json.loads(v)["file"]["filename"]; continue
        if o == "-device" and v.startswith("virtio-blk-pci,drive=d0"):
            continue
        out.append((o, v))
    return out + [("-drive", f"file={disk},if=virtio,cache=none")]
def v_raw(pr):
    return [("-machine", "q35,accel=tcg"), ("-cpu", "max"), ("-m", "256"), ("-nodefaults", None),
            ("-display", "none"), ("-no-user-config", None),
            ("-drive", "file=@DISK@,if=virtio,cache=none"),
            ("-chardev", "socket,id=qmp,path=@DIR@/qmp.sock,server=on,wait=off"),
            ("-mon", "chardev=qmp,mode=control"), ("-serial", "file:@DIR@/console.log")]
def v_lean(pr):  # all cuts that keep features: none of the removals, VGA 4 MiB
    return v_vga4(pr)


VARIANTS = {k[2:]: f for k, f in globals().items() if k.startswith("v_")}


class Guest:
    def __init__(self, name):
        self.name = name
        parts = name.split("+")
        self.fns = [VARIANTS[p] for p in parts]
        self.dir = f"{base}/{name}"
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.disk = f"{self.dir}/disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "qcow2", self.disk], check=True)
        os.chmod(self.disk, 0o666)
        self.gen = 0
        self.proc = None

    def argv(self, gen, incoming):
        pr = pairs(kumo)
        for f in self.fns:
            pr = f(pr)
        d = f"{self.dir}/g{gen}"
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        av = [kumo[0]]
        for o, v in pr:
            if o == "-blockdev" and '"qcow2"' in (v or ""):
                j = json.loads(v); j["file"]["filename"] = self.disk; v = json.dumps(j)
            if v is not None:
                v = v.replace(KDIR, d).replace("@DIR@", d).replace("@DISK@", self.disk)
                # The agent hands QEMU its QMP socket as fd 3; here QEMU makes it.
                v = v.replace("id=qmp,fd=3,", f"id=qmp,path={d}/qmp.sock,")
                if o == "-drive" and "file=" in v and "@" not in v:
                    v = f"file={self.disk},if=virtio,cache=none"
            av.append(o)
            if v is not None:
                av.append(v)
        av += extra
        if incoming:
            av += ["-object", f"tls-creds-x509,id=srv,dir={tlsdir},endpoint=server,verify-peer=on",
                   "-incoming", "defer"]
        return av, d

    def start(self, incoming):
        av, d = self.argv(self.gen, incoming)
        self.gen += 1
        p = subprocess.Popen(av, stdout=subprocess.DEVNULL, stderr=open(f"{d}/stderr", "w"),
                             start_new_session=True)
        return p, d


def qmp(path, timeout=30):
    end = time.monotonic() + timeout
    while True:
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(path); break
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.005)
    f = s.makefile("rw")
    f.readline()
    call(f, "qmp_capabilities")
    return f


def call(f, cmd, args=None):
    f.write(json.dumps({"execute": cmd, "arguments": args or {}}) + "\n"); f.flush()
    while True:
        m = json.loads(f.readline())
        if "error" in m:
            raise RuntimeError(f"{cmd}: {m['error']}")
        if "return" in m:
            return m["return"]


def cpu(pid):
    with open(f"/proc/{pid}/stat") as fh:
        x = fh.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) * 1000 // TICK


guests = []
def killall():
    for g in guests:
        for p in (g.proc, getattr(g, "t", None)):
            if p and p.poll() is None:
                p.kill()
    shutil.rmtree(base, ignore_errors=True)
atexit.register(killall)
guests += [Guest(v) for v in variants]
for g in guests:
    g.proc, g.d = g.start(False)
for g in guests:
    end = time.monotonic() + 300
    while not os.path.exists(f"{g.d}/console.log") or b"KUMO-GUEST-READY" not in open(f"{g.d}/console.log", "rb").read():
        if time.monotonic() > end or g.proc.poll() is not None:
            sys.exit(f"{g.name} did not boot: {open(g.d + '/stderr').read()}")
        time.sleep(0.5)
    g.q = qmp(f"{g.d}/qmp.sock")
    print(f"# {g.name} booted: {' '.join(g.argv(99, False)[0])}", flush=True)
time.sleep(3)
results = {g.name: [] for g in guests}
for r in range(int(rounds)):
    order = guests[r % len(guests):] + guests[:r % len(guests)]
    for g in order:
        port = 47000 + random.randrange(2000)
        uri = f"tcp:127.0.0.1:{port}"
        t, td = g.start(True)
        g.t = t
        b = qmp(f"{td}/qmp.sock")
        mfd = "mfd" in g.name.split("+")
        if mfd:
            for q in (b, g.q):
                call(q, "migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": True}]})
                call(q, "migrate-set-parameters", {"multifd-channels": int(os.environ.get("MFD_CHANNELS", "2"))})
        call(b, "migrate-set-parameters", {"tls-creds": "srv"})
        call(b, "migrate-incoming", {"uri": uri})
        a = g.q
        try:
            call(a, "object-add", {"qom-type": "tls-creds-x509", "id": "cli", "dir": tlsdir,
                                   "endpoint": "client", "verify-peer": True})
        except RuntimeError:
            pass
        call(a, "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
        call(a, "migrate-set-parameters", {"tls-creds": "cli", "tls-hostname": "127.0.0.1",
                                           "max-bandwidth": 1000000000, "downtime-limit": 100})
        call(a, "stop")
        c0s, c0t = cpu(g.proc.pid), cpu(t.pid)
        w0 = time.monotonic()
        call(a, "migrate", {"uri": uri})
        while True:
            st = call(a, "query-migrate")
            if st.get("status") == "completed":
                break
            if st.get("status") in ("failed", "cancelled"):
                sys.exit(f"{g.name}: {st}")
            time.sleep(0.01)
        wall = int((time.monotonic() - w0) * 1000)
        c1s, c1t = cpu(g.proc.pid), cpu(t.pid)
        # the target's incoming side ends a moment after the source's completed
        end = time.monotonic() + 10
        while call(b, "query-status")["status"] in ("inmigrate",) and time.monotonic() < end:
            time.sleep(0.005)
        c1t = cpu(t.pid)
        call(b, "cont")
        call(a, "quit")
        g.proc.wait()
        g.proc, g.d, g.q = t, td, b
        shutil.rmtree(os.path.dirname(td) + f"/g{g.gen - 3}", ignore_errors=True)
        row = (st.get("total-time"), wall, c1s - c0s, c1t - c0t, st["ram"]["transferred"] >> 20)
        results[g.name].append(row)
        print(f"{r} {g.name} copy {row[0]} wall {row[1]} src_cpu {row[2]} dst_cpu {row[3]} MiB {row[4]}", flush=True)


def med(xs):
    xs = sorted(xs); return xs[(len(xs) - 1) // 2] if len(xs) % 2 else (xs[len(xs)//2 - 1] + xs[len(xs)//2]) / 2


print("# variant: median copy ms, wall ms, src cpu ms, dst cpu ms, MiB; paired copy ratio vs first")
ref = results[guests[0].name]
for g in guests:
    rs = results[g.name]
    pr = [rs[i][1] / max(ref[i][1], 1) for i in range(len(rs))]
    print(f"SUMMARY {g.name}: copy {med([x[0] for x in rs])} wall {med([x[1] for x in rs])} "
          f"src_cpu {med([x[2] for x in rs])} dst_cpu {med([x[3] for x in rs])} MiB {med([x[4] for x in rs])} "
          f"paired_wall_vs_{guests[0].name} {med(pr):.2f}", flush=True)
for g in guests:
    try:
        call(g.q, "quit")
    except Exception:
        pass
    g.proc.wait()
shutil.rmtree(base, ignore_errors=True)
