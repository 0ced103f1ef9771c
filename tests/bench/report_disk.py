# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The qguard authors
"""Tables of make bench for issue 12: the disk section, the NBD write
latencies, and the targets about syncs, allocation and check cost."""

TARGET_DD_RATIO = 3.0        # workload 1 at most 3x dd's time
TARGET_IR_PER_CHECK = 60


def f3(x, nd=3):
    return "–" if x is None else ("%.*f" % (nd, x))


def num(n):
    return "–" if n is None else "{:,}".format(int(n))


def mib(n):
    return "%d MiB" % (n >> 20) if n % (1 << 20) == 0 else \
        "%.1f MiB" % (n / (1 << 20))


def table(head, rows):
    sep = ["---"] + ["---:"] * (len(head) - 1)
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def row(rows, rid):
    return next((r for r in rows if r["id"] == rid), None)


def wall(r):
    return (r or {}).get("median", {}).get("wall")


def disk_table(wl):
    rows = []
    for r in wl["rows"]:
        m = r.get("median")
        if not m:
            rows.append([r["label"], r.get("error", "failed")] + ["–"] * 6)
            continue
        sc = r.get("syscalls", {})
        rows.append([r["label"],
                     "%s (%s–%s)" % (f3(m["wall"]), f3(m["wall_min"]),
                                     f3(m["wall_max"])),
                     f3(m["user"]), f3(m["sys"]), num(r.get("syncs")),
                     num(r.get("writes")),
                     ", ".join("%s %s" % (k, num(v))
                               for k, v in sorted(sc.items()) if v) or "–",
                     mib(r["allocated_bytes"]) if r.get("allocated_bytes")
                     else "–"])
    return table(["run", "wall s (min–max)", "user s", "sys s",
                  "fdatasync + fsync", "write calls", "calls on the image "
                  "(strace -c -P)", "allocated"], rows)


def load_md(sec):
    """The load average around a section: the machine may be shared."""
    la = sec.get("loadavg")
    if not la:
        return []
    return ["Load average (1, 5, 15 min) at the start of this section %s, "
            "at its end %s." % (" ".join(la[0]), " ".join(la[1])), ""]


def dd_ratio(d, rid, dd):
    rows = d["workloads"]["w1"]["rows"]
    a, b = wall(row(rows, rid)), wall(row(rows, dd))
    return (a, b, a / b) if a and b else (a, b, None)


def disk_md(d):
    if not d or "error" in d:
        return ["Skipped: %s" % (d or {}).get("error", "not run"), ""]
    out = ["Images in a directory of the checkout (%s on %s), not tmpfs; "
           "`sync` before every run so that earlier runs' dirty pages are "
           "not written back during it. Syscall counts are of one further "
           "run under `strace -f -c -P IMAGE` (only calls on the image "
           "file; the timed runs are not traced)." % (d["fstype"],
                                                      d["device"]), ""]
    out += load_md(d)
    w = d["workloads"]
    if "w1" in w:
        w1 = w["w1"]
        a, b, r = dd_ratio(d, "qguard", "dd")
        at, bt, rt = dd_ratio(d, "qguard-tmpfs", "dd-tmpfs")
        out += ["### 1. Metadata preallocation on disk", "",
                "`create -o preallocation=metadata,cluster_size=512`. "
                "qguard at %s on the disk: %s s against %s s for `dd` "
                "writing the same bytes with one fdatasync (%s×); on tmpfs "
                "%s s against %s s (%s×). QEMU 7.2 runs at %s: its create "
                "grows faster than linearly (a sync per refcount block, an "
                "overlap scan linear in the tables) and takes minutes at "
                "the full size on this disk." % (
                    mib(w1["size"]), f3(a), f3(b),
                    "%.1f" % r if r else "–", f3(at), f3(bt),
                    "%.1f" % rt if rt else "–", mib(w1["qemu_size"])), "",
                disk_table(w1), ""]
    if "w2" in w:
        out += ["### 2. Sequential 64 KiB writes on disk", "",
                "%d sequential 64 KiB writes into a fresh %s image with "
                "512-byte clusters, `bench -w -d 1 -t writeback`." % (
                    w["w2"]["requests"], mib(w["w2"]["size"])), "",
                disk_table(w["w2"]), ""]
    if "w3" in w:
        out += ["### 3. Random 512 B writes on disk", "",
                "%d random 512 B writes (the workload-3 script) into a copy "
                "of a %s image preallocated by qemu-img, `-t writeback` for "
                "both tools (qemu-io's default, writethrough, flushes after "
                "every write)." % (w["w3"]["writes"],
                                   mib(w["w3"]["size"])), "",
                disk_table(w["w3"]), ""]
    return out


def nbd_md(n):
    if not n or "error" in n:
        return ["Skipped: %s" % (n or {}).get("error", "not run"), ""]
    rows = []
    for r in n["rows"]:
        rows.append([r["label"], r["connections"], "%.0f" % r["iops"],
                     "%.1f" % r["mib_s"], "%.3f" % r["p50_ms"],
                     "%.3f" % r["p90_ms"], "%.3f" % r["p99_ms"],
                     "%.3f" % r["p999_ms"], r["check"][:40]])
    return ["fio %s (nbd engine): `--rw=randwrite --bs=4k --iodepth=%d "
            "--numjobs=N --time_based --runtime=%d`, one NBD connection per "
            "job, on a fresh %s qcow2 image (64 KiB clusters) on tmpfs. "
            "Latency is fio's completion latency (clat)." % (
                n.get("fio", ""), n["depth"], n["runtime"],
                mib(n["size"])), ""] + load_md(n) + [
            table(["server", "connections", "IOPS", "MiB/s", "p50 ms",
                   "p90 ms", "p99 ms", "p99.9 ms", "qemu-img check"], rows),
            ""]


def targets(res, ir_rows):
    """Issue 12's targets: [(target, measured, verdict)].  @ir_rows are
    (workload, label, Ir per check) from the callgrind runs."""
    out = []
    d = res.get("disk")
    if d and "workloads" in d and "w1" in d["workloads"]:
        a, b, r = dd_ratio(d, "qguard", "dd")
        at, bt, rt = dd_ratio(d, "qguard-tmpfs", "dd-tmpfs")
        ok = r is not None and r <= TARGET_DD_RATIO and \
            rt is not None and rt <= TARGET_DD_RATIO
        q = row(d["workloads"]["w1"]["rows"], "qguard")
        out.append(("Workload 1 (%s) ≤ 3× `dd` of the same bytes with one "
                    "fdatasync, on disk and on tmpfs (same run)" %
                    mib(d["workloads"]["w1"]["size"]),
                    "disk: %s s vs dd %s s = %s×, %s fdatasync, %s write "
                    "calls; tmpfs: %s s vs dd %s s = %s×" % (
                        f3(a), f3(b), "%.1f" % r if r else "–",
                        num((q or {}).get("syncs")),
                        num((q or {}).get("writes")), f3(at), f3(bt),
                        "%.1f" % rt if rt else "–"),
                    "met" if ok else "**not met**"))
    tops = []
    bad = []
    for key, wl in sorted(res["workloads"].items()):
        for r in wl["rows"]:
            if r["engine"] != "qguard":
                continue
            rid = r["id"].replace("qg-", "")
            c = r.get("callgrind") or {}
            top = [n for n, _ in (c.get("top_self") or [])[:5]]
            if top:
                tops.append("%s %s callgrind: %s" % (key, rid,
                                                     ", ".join(top[:3])))
                if "find_free_run" in top:
                    bad.append("%s %s callgrind" % (key, r["id"]))
            p = r.get("perf") or {}
            ptop = [n for n, _ in (p.get("top_all") or [])[:5]]
            if ptop:
                tops.append("%s %s perf: %s" % (key, rid, ", ".join(ptop[:3])))
                if any(n.split(".")[0] == "find_free_run" for n in ptop):
                    bad.append("%s %s perf" % (key, r["id"]))
    if tops:
        out.append(("Allocation without refcount scans: find_free_run out "
                    "of the top of every profile (top 5 by self cost: "
                    "callgrind instructions and perf %s samples; the top 3 "
                    "shown)" % res.get("machine", {}).get("perf_event", ""),
                    "; ".join(tops),
                    "met" if not bad else "**not met** (%s)" % ", ".join(bad)
                    ))
    if ir_rows:
        bad = [w for w, _, ir in ir_rows if ir > TARGET_IR_PER_CHECK]
        out.append(("The overlap check ≤ %d instructions per check, all "
                    "three workloads (callgrind: inclusive Ir of the check "
                    "entry points ÷ checks)" % TARGET_IR_PER_CHECK,
                    "; ".join("%s %s %.0f" % x for x in ir_rows),
                    "met" if not bad else "**not met** (%s)" %
                    ", ".join(sorted(set(bad)))))
    n = res.get("nbd")
    if n and n.get("rows"):
        det = []
        for conns in sorted({r["connections"] for r in n["rows"]}):
            q = next((r for r in n["rows"] if r["connections"] == conns and
                      r["server"] == "qguard"), None)
            e = next((r for r in n["rows"] if r["connections"] == conns and
                      r["server"] == "qemu-nbd"), None)
            t = next((r for r in n["rows"] if r["connections"] == conns and
                      r["server"] == "qguard-t2"), None)
            if q and e:
                det.append("%d conn: qguard %.0f IOPS p50 %.2f p99 %.2f ms, "
                           "%sqemu-nbd %.0f IOPS p50 %.2f p99 %.2f ms" % (
                               conns, q["iops"], q["p50_ms"], q["p99_ms"],
                               "qguard nbdkit --threads=2 %.0f IOPS p50 "
                               "%.2f p99 %.2f ms, " % (
                                   t["iops"], t["p50_ms"], t["p99_ms"])
                               if t else "",
                               e["iops"], e["p50_ms"], e["p99_ms"]))
        out.append(("NBD 4 KiB random writes, QD 16 per connection: p50/p99 "
                    "beside qemu-nbd (writes to different clusters in "
                    "parallel)", "; ".join(det), "recorded"))
    return out
