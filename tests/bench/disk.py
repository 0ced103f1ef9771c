# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The qguard authors
"""The disk section of make bench: the three workloads on the file system
of the checkout (a real disk, where a sync costs what it costs), qguard
beside QEMU 7.2, with wall, user and sys time and the fdatasync and write
calls each makes on the image (strace -c -P IMAGE).  Workload 1 also runs
`dd` writing the same number of bytes with one fdatasync, on the disk and on
tmpfs, as the floor that qguard's create is measured against.

QEMU's workload 1 grows much faster than linearly with the size (its overlap
scan is linear in the tables, and it syncs per refcount block), so it runs
at a smaller size, given in the table, beside qguard at that size.
"""

import os
import shutil
import statistics
import subprocess
import tempfile

import profiling as P

SYSCALLS = ["fdatasync", "fsync", "pwritev", "pwritev2", "pwrite64", "write",
            "ftruncate", "fallocate"]
WRITE_CALLS = ("pwritev", "pwritev2", "pwrite64", "write")
MiB = 1 << 20


def fmt_size(n):
    for unit, v in (("G", 1 << 30), ("M", MiB)):
        if n >= v and n % v == 0:
            return "%d%s" % (n // v, unit)
    return str(n)


def strace_counts(cmd, image, stdin_path, tmp):
    """Calls per syscall that touch @image (strace -f -c -P)."""
    out = os.path.join(tmp, "strace.txt")
    full = ["strace", "-f", "-c", "-o", out, "-P", image,
            "-e", "trace=" + ",".join(SYSCALLS)] + cmd
    r = P.run_timed(full, stdin_path=stdin_path)
    counts = {}
    if os.path.exists(out):
        for line in open(out).read().splitlines():
            tok = line.split()
            if len(tok) >= 5 and tok[-1] in SYSCALLS and tok[3].isdigit():
                counts[tok[-1]] = int(tok[3])
        os.unlink(out)
    counts["rc"] = r["rc"]
    return counts


def drop_dirty():
    # Earlier runs' dirty pages must not be written back during this one.
    subprocess.run(["sync"])


class Row:
    def __init__(self, rid, label, engine, size, prepare, cmd, image,
                 stdin=None, runs=3):
        self.rid, self.label, self.engine, self.size = rid, label, engine, size
        self.prepare, self.cmd, self.image = prepare, cmd, image
        self.stdin, self.runs = stdin, runs


def run_row(row, tmp, progress, key):
    res = {"id": row.rid, "label": row.label, "engine": row.engine,
           "size": row.size, "runs": []}
    for i in range(row.runs):
        row.prepare()
        drop_dirty()
        r = P.run_timed(row.cmd(), stdin_path=row.stdin)
        if r["rc"]:
            res["error"] = "exit %d" % r["rc"]
            break
        if os.path.exists(row.image):
            st = os.stat(row.image)
            r["allocated_bytes"] = st.st_blocks * 512
        res["runs"].append({k: r.get(k) for k in ("wall", "user", "sys",
                                                  "allocated_bytes")})
        progress("disk %s: %-40s run %d/%d: %.3f s wall, %.3f user, %.3f sys"
                 % (key, row.label, i + 1, row.runs, r["wall"], r["user"],
                    r["sys"]))
    if res["runs"]:
        ws = [x["wall"] for x in res["runs"]]
        res["median"] = {k: statistics.median(x[k] for x in res["runs"])
                         for k in ("wall", "user", "sys")}
        res["median"].update({"wall_min": min(ws), "wall_max": max(ws),
                              "n": len(ws)})
        res["allocated_bytes"] = res["runs"][0].get("allocated_bytes")
    row.prepare()
    drop_dirty()
    c = strace_counts(row.cmd(), row.image, row.stdin, tmp)
    res["syscalls"] = {k: v for k, v in c.items() if k != "rc"}
    res["syncs"] = c.get("fdatasync", 0) + c.get("fsync", 0)
    res["writes"] = sum(c.get(k, 0) for k in WRITE_CALLS)
    if os.path.exists(row.image):
        os.unlink(row.image)
    return res


def dd_row(rid, label, path, nbytes, runs=3):
    mib = max(1, -(-nbytes // MiB))

    def prepare():
        if os.path.exists(path):
            os.unlink(path)

    return Row(rid, label, "dd", mib * MiB, prepare,
               lambda: ["dd", "if=/dev/zero", "of=" + path, "bs=1M",
                        "count=%d" % mib, "conv=fdatasync", "status=none"],
               path, runs=runs)


def run_disk(ctx, progress):
    sc = ctx.scale
    base = tempfile.mkdtemp(prefix="bench-disk.", dir=ctx.build)
    # df names ext4 as such; stat -f says "ext2/ext3" for the whole family.
    fstype = subprocess.run(["df", "--output=fstype", base],
                            capture_output=True, text=True).stdout.split()[-1]
    dev = subprocess.run(["df", "--output=source", base], capture_output=True,
                         text=True).stdout.split()[-1:]
    out = {"dir": base, "fstype": fstype, "device": dev[0] if dev else "",
           "workloads": {}}
    progress("disk: images in %s (%s on %s)" % (base, fstype, out["device"]))
    img = os.path.join(base, "img.qcow2")
    tmp = ctx.tmp
    try:
        # ---- 1: create with metadata preallocation ----------------------
        opts = "preallocation=metadata,cluster_size=512"

        def rm_img():
            if os.path.exists(img):
                os.unlink(img)

        def create(tool, size):
            return lambda: [tool, "create", "-q", "-f", "qcow2", "-o", opts,
                            img, fmt_size(size)]

        # Issue 12's size in both modes: it is cheap for qguard.
        s1, s1q = sc.get("disk_w1", sc["w1"]), sc["disk_w1_qemu"]
        rows = []
        r = run_row(Row("qguard", "qguard-img create %s" % fmt_size(s1),
                        "qguard", s1, rm_img, create(ctx.qguard_img, s1),
                        img), tmp, progress, "w1")
        rows.append(r)
        nbytes = r.get("allocated_bytes") or 0
        rows.append(run_row(dd_row("dd", "dd of the same %s, one fdatasync"
                                   % fmt_size(-(-nbytes // MiB) * MiB),
                                   os.path.join(base, "dd.bin"), nbytes),
                            tmp, progress, "w1"))
        # The tmpfs floor for the tmpfs target, beside the same create there.
        shm = os.path.join(ctx.tmp, "w1-disk-shm.qcow2")

        def rm_shm():
            if os.path.exists(shm):
                os.unlink(shm)
        r = run_row(Row("qguard-tmpfs", "qguard-img create %s on tmpfs" %
                        fmt_size(s1), "qguard", s1, rm_shm,
                        lambda: [ctx.qguard_img, "create", "-q", "-f", "qcow2",
                                 "-o", opts, shm, fmt_size(s1)], shm),
                    tmp, progress, "w1")
        rows.append(r)
        nb_shm = r.get("allocated_bytes") or 0
        rows.append(run_row(dd_row("dd-tmpfs", "dd of the same %s on tmpfs, "
                                   "one fdatasync" %
                                   fmt_size(-(-nb_shm // MiB) * MiB),
                                   os.path.join(ctx.tmp, "dd.bin"), nb_shm),
                            tmp, progress, "w1"))
        rows.append(run_row(Row("qemu-small", "qemu-img create %s" %
                                fmt_size(s1q), "qemu", s1q, rm_img,
                                create("qemu-img", s1q), img,
                                runs=sc["disk_qemu_runs"]),
                            tmp, progress, "w1"))
        rows.append(run_row(Row("qguard-small", "qguard-img create %s" %
                                fmt_size(s1q), "qguard", s1q, rm_img,
                                create(ctx.qguard_img, s1q), img),
                            tmp, progress, "w1"))
        out["workloads"]["w1"] = {"rows": rows, "size": s1, "qemu_size": s1q}

        # ---- 2: sequential 64 KiB writes into a fresh image --------------
        s2 = sc["disk_w2"]
        nreq = s2 // 65536 - 1
        rows = []
        for tool, rid in ((ctx.qguard_img, "qguard"), ("qemu-img", "qemu")):
            def prep(tool=tool):
                rm_img()
                subprocess.run([tool, "create", "-q", "-f", "qcow2", "-o",
                                "cluster_size=512", img, fmt_size(s2)],
                               check=True)
            rows.append(run_row(Row(
                rid, "%s bench -w, %d × 64 KiB" %
                (os.path.basename(tool), nreq), rid, s2, prep,
                lambda tool=tool: [tool, "bench", "-w", "-d", "1", "-s",
                                   "65536", "-S", "65536", "-c", str(nreq),
                                   "-t", "writeback", img], img,
                runs=sc["disk_qemu_runs"] if rid == "qemu" else 2),
                tmp, progress, "w2"))
        out["workloads"]["w2"] = {"rows": rows, "size": s2,
                                  "requests": nreq}

        # ---- 3: random 512 B writes into a preallocated image ------------
        s3, n3 = sc["disk_w3"], sc["disk_w3_writes"]
        script = ctx.w3_script(s3, n3)
        template = ctx.w3_template(s3)
        rows = []
        for tool, rid in ((ctx.qguard_io, "qguard"), ("qemu-io", "qemu")):
            def prep():
                rm_img()
                subprocess.run(["cp", "--sparse=always", template, img],
                               check=True)
            rows.append(run_row(Row(
                rid, "%s -t writeback, %d writes" %
                (os.path.basename(tool), n3), rid, s3, prep,
                lambda tool=tool: [tool, "-t", "writeback", img], img,
                stdin=script,
                runs=sc["disk_qemu_runs"] if rid == "qemu" else 2),
                tmp, progress, "w3"))
        out["workloads"]["w3"] = {"rows": rows, "size": s3, "writes": n3}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out
