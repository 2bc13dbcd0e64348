#!/usr/bin/env python3
"""Line up the KUMO_TRACE marks of bench/container_start.sh --trace and print, for each
hop of the create path, its median, min and max over the runs (ms).

    bench/create_hops.py NAMES_FILE LOG...

NAMES_FILE: one line per run, "NAME T0 SEEN_MS" (T0: the client's wall clock before the
POST, epoch seconds; SEEN_MS: when the client saw the output). LOG: the daemons' logs
and the shims' logs (their lines start "HH:MM:SS.uuuuuu PROG trace: ...")."""
import re
import statistics
import sys

# (mark, pattern); NAME is the container, OP an operation id learnt from an earlier mark.
MARKS = [
    ("request", r"kumo-controllerd trace: create (?P<n>\S+): request parsed"),
    ("placed", r"kumo-controllerd trace: create (?P<n>\S+): placed on"),
    ("committed", r"kumo-controllerd trace: create (?P<n>\S+): committed"),
    ("queued", r"kumo-controllerd trace: create (?P<n>\S+): command queued"),
    ("agent got it", r"kumo-agentd trace: op (?P<op>\S+): create (?P<n>\S+) started"),
    ("image read", r"kumo-agentd trace: container (?P<n>\S+): image done"),
    ("bundle written", r"kumo-agentd trace: container (?P<n>\S+): bundle done"),
    ("shim spawned", r"kumo-agentd trace: container (?P<n>\S+): shim spawned"),
    ("shim main", r"kumo-shim trace: shim \S+/(?P<n>[^/\s]+): main"),
    ("overlay mounted", r"kumo-shim trace: shim (?P<n>\S+): overlay mounted"),
    ("runc run", r"kumo-shim trace: shim (?P<n>\S+): runc run$"),
    ("container.pid", r"kumo-shim trace: shim (?P<n>\S+): container.pid seen"),
    ("runc returned", r"kumo-shim trace: shim (?P<n>\S+): runc run returned"),
    ("start settled", r"kumo-agentd trace: container (?P<n>\S+): start settled"),
    ("op-done sent", r"kumo-agentd trace: op (?P<op>\S+): succeeded"),
    ("op-done heard", r"kumo-controllerd trace: host \S+: op-done (?P<op>\S+) instance-create"),
]
LINE = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d{6}) (.*)$")


def main():
    runs = [l.split() for l in open(sys.argv[1]) if l.strip()]
    names = {r[0] for r in runs}
    events = []  # (seconds of the day, mark, name); names repeat across bench runs
    op_name = {}
    lines = []
    for path in sys.argv[2:]:
        for l in open(path, errors="replace"):
            m = LINE.match(l.rstrip("\n"))
            if m and " trace: " in l:
                t = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
                lines.append((t, m[4]))
    lines.sort()
    for t, text in lines:
        for mark, pat in MARKS:
            m = re.search(pat, text)
            if not m:
                continue
            d = m.groupdict()
            n = d.get("n")
            if n is None:
                n = op_name.get(d["op"])
            elif "op" in d:
                op_name[d["op"]] = n
            if n in names:
                events.append((t, mark, n))
    # Each mark against the mark before it in the path's order (the previous one seen
    # in that run), and against the POST.
    order = ["client POST"] + [m for m, _ in MARKS]
    seen_after_runc = []
    hops = {m: [] for m in order}
    since = {m: [] for m in order}
    for name, t0, seen in runs:
        t0 = float(t0) % 86400
        at = {"client POST": t0, "client saw output": t0 + float(seen) / 1000}
        for t, mark, n in events:
            if n == name and t >= t0 and mark not in at:
                at[mark] = t
        prev = None
        for m in order:
            if m not in at:
                continue
            if prev is not None:
                hops[m].append((at[m] - at[prev]) * 1000)
                since[m].append((at[m] - t0) * 1000)
            prev = m
        if "runc run" in at:
            seen_after_runc.append((at["client saw output"] - at["runc run"]) * 1000)
    print("%-18s %-18s %5s %8s %8s %8s %11s" %
          ("from", "to", "runs", "median", "min", "max", "since POST"))
    prev = "client POST"
    for m in order[1:]:
        v = hops[m]
        if v:
            print("%-18s %-18s %5d %8.1f %8.1f %8.1f %11.1f" %
                  (prev, m, len(v), statistics.median(v), min(v), max(v),
                   statistics.median(since[m])))
            prev = m
    v = seen_after_runc
    if v:
        print("%-18s %-18s %5d %8.1f %8.1f %8.1f %11.1f" %
              ("runc run", "client saw output", len(v), statistics.median(v), min(v), max(v),
               statistics.median(float(r[2]) for r in runs)))
    print("(ms; the first output comes between \"runc run\" and \"runc returned\"; the "
          "client sees it at its next poll of the logs)")

main()
