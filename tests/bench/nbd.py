# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The qguard authors
"""The NBD write-latency section of make bench: fio's nbd engine sends 4 KiB
random writes at queue depth 16 on each of several connections to one
export, served by nbdkit with the qguard plugin (with nbdkit's default of
16 threads per connection, and with 2) or by qemu-nbd 7.2, on a fresh
qcow2 image (64 KiB clusters) in the benchmark's temp directory.
Throughput and completion-latency percentiles come from fio's JSON output.
The first writes to a cluster allocate it (copy-on-write of the rest of
the cluster, by fallocate where it reads as zeros); later ones overwrite
in place.
"""

import json
import os
import subprocess
import time

import profiling as P

SERVERS = [
    ("qguard", "nbdkit + qguard plugin"),
    ("qguard-t2", "nbdkit --threads=2 + qguard plugin"),
    ("qemu-nbd", "qemu-nbd 7.2 (--cache=writeback --aio=threads)"),
]

# nbdkit's threads per connection for each qguard row (its default is 16;
# docs/nbd-export.md says why fewer shorten the tail on few CPUs).
NBDKIT_THREADS = {"qguard": None, "qguard-t2": 2}


def fmt_size(n):
    return "%dG" % (n >> 30) if n % (1 << 30) == 0 else "%dM" % (n >> 20)


def start_server(ctx, sid, img, sock, pidfile, conns):
    if sid in NBDKIT_THREADS:
        threads = NBDKIT_THREADS[sid]
        cmd = (["nbdkit", "-f", "-U", sock, "-P", pidfile] +
               (["--threads=%d" % threads] if threads else []) +
               [ctx.plugin, "file=" + img])
    else:
        cmd = ["qemu-nbd", "-t", "-k", sock, "--pid-file=" + pidfile,
               "--cache=writeback", "--aio=threads",
               "--shared=%d" % max(conns, 1), "-f", "qcow2", img]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    ctx.children.append(p)
    for _ in range(300):
        if os.path.exists(sock) or p.poll() is not None:
            break
        time.sleep(0.02)
    if p.poll() is not None:
        raise RuntimeError("%s exited: %s" % (cmd[0],
                                              p.stderr.read().decode()[-300:]))
    return p


def fio_run(sock, conns, depth, runtime, out):
    cmd = ["fio", "--name=randwrite", "--ioengine=nbd",
           "--uri=nbd+unix:///?socket=" + sock, "--rw=randwrite", "--bs=4k",
           "--iodepth=%d" % depth, "--numjobs=%d" % conns, "--time_based",
           "--runtime=%d" % runtime, "--group_reporting",
           "--randseed=2014", "--output-format=json", "--output=" + out]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=runtime + 120)
    if r.returncode:
        raise RuntimeError("fio: " + (r.stderr or r.stdout)[-300:])
    text = open(out).read()
    d = json.loads(text[text.index("{"):])
    w = d["jobs"][0]["write"]
    pc = w["clat_ns"]["percentile"]
    return {"iops": w["iops"], "mib_s": w["bw_bytes"] / (1 << 20),
            "p50_ms": pc["50.000000"] / 1e6, "p90_ms": pc["90.000000"] / 1e6,
            "p99_ms": pc["99.000000"] / 1e6,
            "p999_ms": pc["99.900000"] / 1e6,
            "mean_ms": w["clat_ns"]["mean"] / 1e6, "ios": w["total_ios"]}


def run_nbd(ctx, progress):
    sc = ctx.scale
    size, runtime, depth = sc["nbd_size"], sc["nbd_runtime"], 16
    ver = subprocess.run(["fio", "--version"], capture_output=True,
                         text=True).stdout.strip()
    out = {"size": size, "runtime": runtime, "depth": depth,
           "cluster_size": 65536, "fio": ver, "rows": []}
    img = os.path.join(ctx.tmp, "nbd.qcow2")
    sock = os.path.join(ctx.tmp, "nbd.sock")
    pidfile = os.path.join(ctx.tmp, "nbd.pid")
    fio_out = os.path.join(ctx.tmp, "fio.json")
    for conns in sc["nbd_connections"]:
        for sid, label in SERVERS:
            for f in (img, sock, pidfile):
                if os.path.exists(f):
                    os.unlink(f)
            tool = ctx.qguard_img if sid in NBDKIT_THREADS else "qemu-img"
            subprocess.run([tool, "create", "-q", "-f", "qcow2", img,
                            fmt_size(size)], check=True)
            p = start_server(ctx, sid, img, sock, pidfile, conns)
            try:
                r = fio_run(sock, conns, depth, runtime, fio_out)
            finally:
                P.stop_process(p)
                ctx.children.remove(p)
            chk = subprocess.run(["qemu-img", "check", img],
                                 capture_output=True, text=True)
            r.update({"server": sid, "label": label, "connections": conns,
                      "check": (chk.stdout.strip().splitlines() or
                                [chk.stderr.strip()])[0].rstrip(".")})
            out["rows"].append(r)
            progress("nbd: %-45s %d conn × QD %d: %.0f IOPS, p50 %.2f ms, "
                     "p99 %.2f ms" % (label, conns, depth, r["iops"],
                                      r["p50_ms"], r["p99_ms"]))
    for f in (img, sock, pidfile, fio_out):
        if os.path.exists(f):
            os.unlink(f)
    return out
