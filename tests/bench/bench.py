#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The qguard authors
"""make bench: the 2014 overlap-check benchmarks, qguard beside QEMU 7.2.

Workloads (docs/benchmarks.md explains the method):
  w1  qemu-img create -f qcow2 -o preallocation=metadata,cluster_size=512
  w2  sequential 64 KiB writes over a fresh image with 512-byte clusters
  w3  random 512-byte writes into a fresh preallocated image (512 B clusters)
  guest  a TCG guest's dd over an NBD export (nbdkit + qguard, qemu-nbd)
  disk   w1-w3 on the checkout's file system (a disk), with sync and write
         counts, and dd of the same bytes as the floor for w1
  nbd    4 KiB random writes over several NBD connections (fio): latency

Default sizes are scaled down to fit about 8 minutes on 2 cores;
BENCH_FULL=1 runs the 2014 sizes.  Other knobs (for development):
BENCH_RUNS=N, BENCH_ONLY=w1,w2,w3,guest,cost,disk,nbd, BENCH_GUEST=0|1,
BENCH_DIR=DIR, BENCH_OUT=DIR (where the docs files go; default docs/).
"""

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import disk as D  # noqa: E402
import guest as G  # noqa: E402
import nbd as N  # noqa: E402
import profiling as P  # noqa: E402
import report as R  # noqa: E402

KiB, MiB, GiB, TiB, PiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50

SCALES = {
    "default": {
        "w1": 1 * GiB, "w1_cg": 128 * MiB,
        "w2": 512 * MiB, "w2_cg": 64 * MiB,
        "w3": 256 * MiB, "w3_writes": 40000,
        "w3_cg": 64 * MiB, "w3_cg_writes": 10000,
        "guest": 256 * MiB, "guest_passes": 2,
        "guest_rows": ["nbd-cached", "nbd-all", "nbd-linear", "qemu-nbd"],
        "perf_min_samples": 20000, "perf_max_runs": 25,
        "disk_w1": 2 * GiB, "disk_w1_qemu": 64 * MiB, "disk_qemu_runs": 1,
        "disk_w2": 32 * MiB, "disk_w3": 64 * MiB, "disk_w3_writes": 5000,
        "nbd_size": 1 * GiB, "nbd_runtime": 6, "nbd_connections": [1, 4],
    },
    "full": {
        "w1": 2 * GiB, "w1_cg": 512 * MiB,
        "w2": 1 * GiB, "w2_cg": 256 * MiB,
        "w3": 1 * GiB, "w3_writes": 100000,
        "w3_cg": 256 * MiB, "w3_cg_writes": 20000,
        "guest": 1 * GiB, "guest_passes": 3,
        "guest_rows": ["nbd-cached", "nbd-all", "nbd-linear", "qemu-nbd",
                       "qemu-nbd-none"],
        "perf_min_samples": 40000, "perf_max_runs": 40,
        "disk_w1": 2 * GiB, "disk_w1_qemu": 128 * MiB,
        "disk_qemu_runs": 2,
        "disk_w2": 128 * MiB, "disk_w3": 256 * MiB, "disk_w3_writes": 20000,
        "nbd_size": 4 * GiB, "nbd_runtime": 15, "nbd_connections": [1, 2, 4],
    },
}

# id, label, engine, runtime options
QG_ROWS = [
    ("qg-cached", "qguard windowed, cached", "qguard", ""),
    ("qg-all", "qguard windowed, all", "qguard", "overlap-check=all"),
    ("qg-c1", "qguard windowed, cached, cache 1", "qguard",
     "overlap-check.cache-size=1"),
    ("qg-linear", "qguard linear (QEMU's scan)", "qguard",
     "overlap-check.algorithm=linear"),
    ("qg-none", "qguard overlap-check=none", "qguard", "overlap-check=none"),
]
QEMU_ROW = ("qemu", "QEMU 7.2 qcow2, cached (default)", "qemu", "")
QEMU_NONE = ("qemu-none", "QEMU 7.2 qcow2, overlap-check=none", "qemu",
             "overlap-check=none")
PROFILED = {"qg-cached", "qg-all", "qg-c1", "qg-linear", "qemu"}
W3_SEED = 2014


def fmt_size(n):
    for unit, v in (("P", PiB), ("T", TiB), ("G", GiB), ("M", MiB)):
        if n >= v and n % v == 0:
            return "%d%s" % (n // v, unit)
    return str(n)


class Ctx:
    pass


# ---- workloads ---------------------------------------------------------------

class Workload:
    """prepare(row, path, p) makes the starting image (not timed);
    cmd(row, path, p) is the timed command; p holds the size parameters."""
    key = title = ""
    stdin = None

    def __init__(self, ctx):
        self.ctx = ctx

    def rows(self):
        return QG_ROWS + [QEMU_ROW, QEMU_NONE]

    def prepare(self, row, path, p):
        pass

    def image_opts(self, row, path):
        return ",".join(x for x in ("driver=qcow2", "file.filename=" + path,
                                    row[3]) if x)

    def work_units(self, p):
        return 1


class CreateWorkload(Workload):
    key = "w1"
    title = "Metadata preallocation (create, 512 B clusters)"

    def rows(self):
        # qemu-img create cannot take overlap-check: no QEMU "none" row.
        return QG_ROWS + [QEMU_ROW]

    def params(self, cg=False):
        return {"size": self.ctx.scale["w1_cg" if cg else "w1"]}

    def prepare(self, row, path, p):
        if os.path.exists(path):
            os.unlink(path)

    def cmd(self, row, path, p):
        o = "preallocation=metadata,cluster_size=512"
        if row[2] == "qemu":
            return ["qemu-img", "create", "-q", "-f", "qcow2", "-o", o, path,
                    fmt_size(p["size"])]
        if row[3]:
            o += "," + row[3]
        return [self.ctx.qguard_img, "create", "-q", "-f", "qcow2", "-o", o,
                path, fmt_size(p["size"])]

    def throughput(self, p, wall):
        return p["size"] / GiB / wall, "image GiB/s"

    def describe(self, p):
        return "create -f qcow2 -o preallocation=metadata,cluster_size=512 " \
            "of a %s image" % fmt_size(p["size"])


class SeqWorkload(Workload):
    key = "w2"
    title = "Sequential 64 KiB writes (fresh image, 512 B clusters)"

    def params(self, cg=False):
        size = self.ctx.scale["w2_cg" if cg else "w2"]
        # One request fewer than size / 64 KiB (16383 for 1 GiB, the count
        # of the recorded runs): offsets 0 .. size - 128 KiB, no wrap.
        return {"size": size, "requests": size // 65536 - 1}

    def prepare(self, row, path, p):
        tool = self.ctx.qguard_img if row[2] == "qguard" else "qemu-img"
        if os.path.exists(path):
            os.unlink(path)
        subprocess.run([tool, "create", "-q", "-f", "qcow2", "-o",
                        "cluster_size=512", path, fmt_size(p["size"])],
                       check=True)

    def cmd(self, row, path, p):
        tool = self.ctx.qguard_img if row[2] == "qguard" else "qemu-img"
        return [tool, "bench", "-w", "-d", "1", "-s", "65536", "-S", "65536",
                "-c", str(p["requests"]), "--image-opts",
                self.image_opts(row, path)]

    def throughput(self, p, wall):
        return p["requests"] * 65536 / MiB / wall, "MiB/s"

    def describe(self, p):
        return "%d sequential 64 KiB writes (queue depth 1) from offset 0 " \
            "into a fresh %s image" % (p["requests"], fmt_size(p["size"]))


class RandomWorkload(Workload):
    key = "w3"
    title = "Random 512 B writes (preallocated image, 512 B clusters)"

    def params(self, cg=False):
        size = self.ctx.scale["w3_cg" if cg else "w3"]
        n = self.ctx.scale["w3_cg_writes" if cg else "w3_writes"]
        return {"size": size, "writes": n,
                "script": self.script(size, n),
                "template": self.template(size)}

    def script(self, size, n):
        path = os.path.join(self.ctx.tmp, "w3-%d-%d.txt" % (size, n))
        if not os.path.exists(path):
            rnd = random.Random(W3_SEED)
            with open(path, "w") as f:
                for _ in range(n):
                    f.write("write -q %d 512\n" % (rnd.randrange(size // 512)
                                                   * 512))
        return path

    def template(self, size):
        # One preallocated image made by qemu-img (the reference), copied
        # fresh before every run of either engine: same starting layout.
        path = os.path.join(self.ctx.tmp, "w3-template-%d.qcow2" % size)
        if not os.path.exists(path):
            self.ctx.progress("w3: qemu-img create -o preallocation=metadata,"
                              "cluster_size=512 template %s (once)"
                              % fmt_size(size))
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                            "preallocation=metadata,cluster_size=512", path,
                            fmt_size(size)], check=True)
        return path

    def prepare(self, row, path, p):
        if os.path.exists(path):
            os.unlink(path)
        subprocess.run(["cp", "--sparse=always", p["template"], path],
                       check=True)

    def cmd(self, row, path, p):
        # qemu-io defaults to writethrough (a flush after every write);
        # both tools get writeback, so that both do the same work.
        tool = self.ctx.qguard_io if row[2] == "qguard" else "qemu-io"
        return [tool, "-t", "writeback", "--image-opts",
                self.image_opts(row, path)]

    def stdin_for(self, p):
        return p["script"]

    def throughput(self, p, wall):
        return p["writes"] / wall, "writes/s"

    def describe(self, p):
        return "%d writes of 512 B at random 512-aligned offsets (seed %d, " \
            "the same script for qemu-io and qguard-io) into a fresh copy " \
            "of a preallocated %s image" % (p["writes"], W3_SEED,
                                             fmt_size(p["size"]))


# ---- one run -----------------------------------------------------------------------

def read_stats(path):
    if not os.path.exists(path):
        return None
    recs = [json.loads(l) for l in open(path).read().splitlines() if l.strip()]
    os.unlink(path)
    if not recs:
        return None
    with_checks = [r for r in recs if r.get("checks")]
    return (with_checks or recs)[-1]


def output_problem(text):
    """qemu-io/qguard-io print only prompts when every command succeeds."""
    for prompt in ("qemu-io> ", "qguard-io> "):
        text = text.replace(prompt, "")
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("Sending", "Run completed", "Overlap ",
                                  "Using random")):
            continue
        keep.append(s)
    return "; ".join(keep[:3])


def run_once(ctx, wl, row, p, wrapper=None, tag="t"):
    path = os.path.join(ctx.tmp, "%s-%s.qcow2" % (wl.key, row[0]))
    wl.prepare(row, path, p)
    stats = os.path.join(ctx.tmp, "stats.json")
    if os.path.exists(stats):
        os.unlink(stats)
    env = dict(os.environ)
    if row[2] == "qguard":
        env["QGUARD_OVERLAP_STATS_FILE"] = stats
    cmd = (wrapper or []) + wl.cmd(row, path, p)
    out = os.path.join(ctx.tmp, "out.txt")
    stdin = wl.stdin_for(p) if hasattr(wl, "stdin_for") else None
    r = P.run_timed(cmd, stdin_path=stdin, stdout_path=out, env=env)
    text = open(out, errors="replace").read()
    r["counters"] = read_stats(stats)
    problem = output_problem(text) if not wrapper else ""
    if r["rc"] != 0 or problem:
        r["error"] = "exit %d: %s" % (r["rc"], problem or text[-300:])
    for line in text.splitlines():
        if line.startswith("Run completed in"):
            r["tool_seconds"] = float(line.split()[3])
    if os.path.exists(path):
        st = os.stat(path)
        r["file_bytes"] = st.st_size
        r["allocated_bytes"] = st.st_blocks * 512
    r["path"] = path
    return r


# ---- driver ------------------------------------------------------------------------------

def machine_info(ctx):
    def cmd_out(c):
        try:
            return subprocess.run(c, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    hyp = "hypervisor" in open("/proc/cpuinfo").read()
    buildopts = {}
    try:
        with open(os.path.join(ctx.build, "meson-info",
                               "intro-buildoptions.json")) as f:
            for o in json.load(f):
                if o["name"] in ("buildtype", "optimization", "debug",
                                 "b_sanitize", "b_lto"):
                    buildopts[o["name"]] = o["value"]
    except (OSError, ValueError, KeyError):
        pass
    dirty = cmd_out(["git", "-C", ctx.top, "status", "--porcelain",
                     "block", "include", "qguard-img.c", "qguard-io.c",
                     "tools"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "vcpus": os.cpu_count(), "virtual_machine": hyp,
        "memory_gib": round(mem / GiB, 1),
        "kernel": platform.release(),
        "os": cmd_out(["sh", "-c", ". /etc/os-release && echo "
                       "\"$PRETTY_NAME\""]),
        "tmpdir": ctx.tmp, "tmpfs": ctx.tmpfs,
        "qemu_img": cmd_out(["qemu-img", "--version"]).splitlines()[0]
        if cmd_out(["qemu-img", "--version"]) else "",
        "perf": cmd_out(["perf", "--version"]),
        "valgrind": cmd_out(["valgrind", "--version"]),
        "cc": cmd_out(["cc", "--version"]).splitlines()[0],
        "build_options": buildopts,
        "perf_event": ctx.perf_event, "pmu": ctx.pmu,
        "perf_freq": ctx.perf_freq,
        "git_head": cmd_out(["git", "-C", ctx.top, "rev-parse", "--short",
                             "HEAD"]),
        "engine_files_modified": len([l for l in dirty.splitlines() if l]),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(runs):
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return None
    s = {k: median([r[k] for r in ok]) for k in ("wall", "user", "sys")}
    s["wall_min"] = min(r["wall"] for r in ok)
    s["wall_max"] = max(r["wall"] for r in ok)
    s["n"] = len(ok)
    tool = [r["tool_seconds"] for r in ok if "tool_seconds" in r]
    if tool:
        s["tool_seconds"] = median(tool)
    return s


def perf_row(ctx, wl, row, p, syms, upkeep):
    """perf record one run; when it has fewer samples than wanted, record
    enough further runs in one loop (images prepared beforehand, only the
    tool's own samples counted) and add them up."""
    data = os.path.join(ctx.tmp, "perf.data")
    rec = P.perf_record_cmd(ctx.perf_event, ctx.perf_freq, data)
    r = run_once(ctx, wl, row, p, wrapper=rec)
    if "error" in r:
        return {"error": r["error"]}
    probe = wl.cmd(row, "x", p)
    comm = os.path.basename(probe[0])
    agg = P.perf_samples(data, comm)
    os.unlink(data)
    runs = 1
    n1 = sum(agg.values())
    need = ctx.scale["perf_min_samples"]
    if n1 < need:
        k = min(ctx.scale["perf_max_runs"] - 1, -(-(need - n1) // max(n1, 1)))
        paths = [os.path.join(ctx.tmp, "%s-%s-p%d.qcow2" % (wl.key, row[0], i))
                 for i in range(k)]
        script = os.path.join(ctx.tmp, "loop.sh")
        stdin = wl.stdin_for(p) if hasattr(wl, "stdin_for") else "/dev/null"
        with open(script, "w") as f:
            for path in paths:
                wl.prepare(row, path, p)
                f.write("%s <%s >/dev/null 2>&1 || exit 1\n" % (
                    shlex.join(wl.cmd(row, path, p)), shlex.quote(stdin)))
        t = P.run_timed(rec + ["sh", script])
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
        if t["rc"] != 0:
            return {"error": "perf loop exit %d" % t["rc"]}
        P.merge_counts(agg, P.perf_samples(data, comm))
        os.unlink(data)
        runs += k
    sh = P.perf_share(agg, syms, upkeep)
    sh["runs"] = runs
    return sh


def bench_workload(ctx, wl):
    p = wl.params()
    cgp = wl.params(cg=True)
    rows = wl.rows()
    res = {"key": wl.key, "title": wl.title, "description": wl.describe(p),
           "callgrind_description": wl.describe(cgp),
           "params": {k: v for k, v in p.items()
                      if k not in ("script", "template")},
           "callgrind_params": {k: v for k, v in cgp.items()
                                if k not in ("script", "template")},
           "rows": [],
           "perf_freq": ctx.perf_freq if ctx.perf_event == "cpu-clock"
           else None}
    runs = {r[0]: [] for r in rows}
    counters = {}
    # Timing: round-robin over the rows so that drift in the machine's load
    # spreads over all of them.
    for rep in range(ctx.runs):
        for row in rows:
            r = run_once(ctx, wl, row, p)
            if rep == 0 and row[0] == "qg-cached" and wl.key != "w1":
                chk = subprocess.run(["qemu-img", "check", r["path"]],
                                     capture_output=True, text=True)
                res["qemu_img_check"] = (
                    chk.stdout.strip().splitlines()[0] if chk.stdout.strip()
                    else chk.stderr.strip()).rstrip(".")
            runs[row[0]].append(r)
            if r.get("counters") and row[0] not in counters:
                counters[row[0]] = r["counters"]
            ctx.progress("%s: %-34s run %d/%d: %s" % (
                wl.key, row[1], rep + 1, ctx.runs,
                "ERROR " + r["error"] if "error" in r else
                "%.3f s wall, %.3f user, %.3f sys" % (r["wall"], r["user"],
                                                      r["sys"])))
    upkeep_syms = {}
    for row in rows:
        rr = {"id": row[0], "label": row[1], "engine": row[2],
              "options": row[3] or "(defaults)",
              "runs": [{k: r.get(k) for k in ("wall", "user", "sys", "rc",
                                              "tool_seconds", "error",
                                              "file_bytes",
                                              "allocated_bytes")}
                       for r in runs[row[0]]],
              "median": summarize(runs[row[0]]),
              "counters": counters.get(row[0])}
        if rr["median"]:
            tp, unit = wl.throughput(p, rr["median"]["wall"])
            rr["throughput"] = tp
            rr["throughput_unit"] = unit
        res["rows"].append(rr)

    byid = {r["id"]: r for r in res["rows"]}
    # callgrind first: its call graph tells perf which overlap functions
    # belong to map upkeep.
    for row in rows:
        if row[0] not in PROFILED:
            continue
        out = os.path.join(ctx.tmp, "cg.%s.%s" % (wl.key, row[0]))
        ctx.progress("%s: %-34s callgrind (%s)" % (wl.key, row[1],
                                                   fmt_size(cgp["size"])))
        t0 = time.time()
        r = run_once(ctx, wl, row, cgp, wrapper=P.callgrind_cmd(out))
        if "error" in r or not os.path.exists(out):
            byid[row[0]]["callgrind"] = {"error": r.get("error", "no output")}
            ctx.progress("%s: callgrind failed: %s" % (wl.key,
                                                       r.get("error")))
            continue
        cg = P.callgrind_share(out, row[2])
        cg["counters"] = r.get("counters")
        cg["seconds"] = time.time() - t0
        c = r.get("counters") or {}
        if cg.get("check_calls"):
            cg["ir_per_check"] = cg["check_ir"] / cg["check_calls"]
        if c.get("inserts") or c.get("removes"):
            cg["ir_per_map_edit"] = cg["upkeep_ir"] / \
                (c.get("inserts", 0) + c.get("removes", 0))
        byid[row[0]]["callgrind"] = cg
        if row[2] == "qguard" and row[0] != "qg-linear":
            upkeep_syms[row[0]] = set(cg["upkeep_only_functions"])
        os.unlink(out)
        ctx.progress("%s: %-34s callgrind: %.4f %% of %d instructions in "
                     "overlap checking (%.1f s)" %
                     (wl.key, row[1], cg["share"] or 0.0, cg["total_ir"],
                      cg["seconds"]))
    ctx.upkeep_syms[wl.key] = upkeep_syms.get("qg-cached", frozenset())

    for row in rows:
        if row[0] not in PROFILED:
            continue
        syms = ctx.overlap_syms if row[2] == "qguard" else P.QEMU_SET
        sh = perf_row(ctx, wl, row, p, syms, upkeep_syms.get(row[0],
                                                             frozenset()))
        byid[row[0]]["perf"] = sh
        if "error" in sh:
            ctx.progress("%s: perf failed: %s" % (wl.key, sh["error"]))
            continue
        ctx.progress("%s: %-34s perf: %.4f %% of %d samples (%d run%s) in "
                     "overlap checking" % (wl.key, row[1], sh["share"] or 0.0,
                                           sh["samples"], sh["runs"],
                                           "s" if sh["runs"] > 1 else ""))
    for f in os.listdir(ctx.tmp):
        if f.startswith(wl.key + "-") and f.endswith(".qcow2"):
            os.unlink(os.path.join(ctx.tmp, f))
    return res


def bench_check_cost(ctx):
    exe = os.path.join(ctx.bindir, "tests", "bench-check-cost")
    cases = ["16:%d" % (1 << k) for k in range(0, 21, 2)] + \
        ["9:%d" % (1 << k) for k in range(0, 7)]
    ctx.progress("check cost: bench-check-cost, 64 KiB clusters 1 GiB..1 PiB"
                 ", 512 B clusters 1..64 GiB")
    pts = []
    for i in range(0, len(cases), 8):    # it takes at most 16 cases
        r = subprocess.run([exe, "--json"] + cases[i:i + 8],
                           capture_output=True, text=True, check=True)
        pts += [json.loads(l) for l in r.stdout.splitlines()
                if l.startswith("{")]
    return pts


KEEP_MARKER = "<!-- Below: not generated by make bench; kept when it " \
    "rewrites this page. -->"


def write_docs(result, outdir):
    os.makedirs(outdir, exist_ok=True)
    # The numbers first: a failure in rendering must not lose a long run.
    with open(os.path.join(outdir, "benchmarks.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    text = R.render(result, outdir)
    print()
    print(R.render_stdout(result))
    path = os.path.join(outdir, "benchmarks.md")
    # Sections other benchmarks wrote below KEEP_MARKER stay.
    kept = ""
    if os.path.exists(path):
        old = open(path).read()
        if KEEP_MARKER in old:
            kept = "\n" + old[old.index(KEEP_MARKER):]
    with open(path, "w") as f:
        f.write(text + kept)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--render", metavar="JSON",
                    help="only rewrite the docs from a benchmarks.json")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            result = json.load(f)
        write_docs(result, os.environ.get("BENCH_OUT", os.path.dirname(
            os.path.abspath(args.render))))
        return 0

    ctx = Ctx()
    ctx.top = os.path.abspath(os.path.join(os.path.dirname(__file__), "..",
                                           ".."))
    ctx.build = os.path.abspath(os.path.join(ctx.top, args.build))
    ctx.full = os.environ.get("BENCH_FULL", "") not in ("", "0")
    ctx.mode = "full" if ctx.full else "default"
    ctx.scale = dict(SCALES[ctx.mode])
    ctx.runs = int(os.environ.get("BENCH_RUNS", "3"))
    only = os.environ.get("BENCH_ONLY",
                          "w1,w2,w3,guest,cost,disk,nbd").split(",")
    if os.environ.get("BENCH_GUEST") == "0" and "guest" in only:
        only.remove("guest")
    outdir = os.environ.get("BENCH_OUT", os.path.join(ctx.top, "docs"))
    ctx.children = []
    ctx.upkeep_syms = {}
    ctx.guest_timeout = 1800
    t_start = time.time()
    step = [0]

    def progress(msg):
        step[0] += 1
        el = time.time() - t_start
        print("[%3d:%02d] %s" % (el // 60, el % 60, msg), flush=True)
    ctx.progress = progress

    base = os.environ.get("BENCH_DIR")
    if not base:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else \
            tempfile.gettempdir()
    ctx.tmp = tempfile.mkdtemp(prefix="qguard-bench.", dir=base)
    fstype = subprocess.run(["stat", "-f", "-c", "%T", ctx.tmp],
                            capture_output=True, text=True).stdout.strip()
    ctx.tmpfs = fstype
    # Snapshot the tools: other work may rebuild build/ during the run.
    bindir = os.path.join(ctx.tmp, "bin")
    os.makedirs(os.path.join(bindir, "tests"))
    for exe in ("qguard-img", "qguard-io", "nbdkit-qguard-plugin.so",
                "libqguard.a", "tests/bench-check-cost"):
        src = os.path.join(ctx.build, exe)
        if os.path.exists(src):
            shutil.copy2(src, os.path.join(bindir, exe))
    ctx.qguard_img = os.path.join(bindir, "qguard-img")
    ctx.qguard_io = os.path.join(bindir, "qguard-io")
    ctx.plugin = os.path.join(bindir, "nbdkit-qguard-plugin.so")
    ctx.bindir = bindir
    ctx.perf_event, ctx.pmu = P.perf_event()
    ctx.perf_freq = 20000
    ctx.overlap_syms, warns = P.qguard_overlap_symbols(bindir)

    def cleanup(*_):
        for c in list(ctx.children):
            P.stop_process(c, sig=signal.SIGINT, timeout=10)
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(1)))

    sc = ctx.scale
    progress("qguard bench, %s mode%s: %s runs per row, temp dir %s (%s), "
             "perf event %s at %d Hz (%s)" % (
                 ctx.mode, "" if ctx.full else
                 " (sizes scaled down; BENCH_FULL=1 runs the 2014 sizes)",
                 ctx.runs, ctx.tmp, fstype, ctx.perf_event, ctx.perf_freq,
                 "PMU present" if ctx.pmu else "no PMU"))
    if not ctx.full:
        progress("scaled sizes: w1 %s (2014: 2G), w2 %s (2014: 1G), "
                 "w3 %s with %d writes (2014: 1G), guest %s x %d passes "
                 "(2014: 1G x 42)" % (fmt_size(sc["w1"]), fmt_size(sc["w2"]),
                                       fmt_size(sc["w3"]), sc["w3_writes"],
                                       fmt_size(sc["guest"]),
                                       sc["guest_passes"]))
    for w in warns:
        progress("warning: " + w)
    result = {"mode": ctx.mode, "scale": {k: v for k, v in sc.items()},
              "scales": SCALES,
              "runs_per_row": ctx.runs, "workloads": {}, "warnings": warns}
    try:
        result["machine"] = machine_info(ctx)
        for cls in (CreateWorkload, SeqWorkload, RandomWorkload):
            wl = cls(ctx)
            if wl.key in only:
                progress("%s: %s" % (wl.key, wl.title))
                result["workloads"][wl.key] = bench_workload(ctx, wl)
        if "cost" in only:
            # A failure here must not lose the workloads measured so far.
            try:
                result["check_cost"] = bench_check_cost(ctx)
            except (OSError, ValueError, subprocess.SubprocessError) as e:
                progress("check cost failed: %s" % e)
        if "disk" in only:
            w3 = RandomWorkload(ctx)
            ctx.w3_script, ctx.w3_template = w3.script, w3.template
            load = open("/proc/loadavg").read().split()[:3]
            result["disk"] = D.run_disk(ctx, progress)
            result["disk"]["loadavg"] = [load, open(
                "/proc/loadavg").read().split()[:3]]
        if "nbd" in only:
            load = open("/proc/loadavg").read().split()[:3]
            try:
                result["nbd"] = N.run_nbd(ctx, progress)
                result["nbd"]["loadavg"] = [load, open(
                    "/proc/loadavg").read().split()[:3]]
            except (RuntimeError, OSError, ValueError,
                    subprocess.SubprocessError) as e:
                progress("nbd benchmark failed: %s" % e)
                result["nbd"] = {"error": str(e)}
        if "guest" in only:
            try:
                result["guest"] = G.run_guest(ctx, sc["guest"],
                                              sc["guest_passes"],
                                              sc["guest_rows"], progress)
            except (G.GuestError, OSError, subprocess.SubprocessError) as e:
                progress("guest benchmark skipped: %s" % e)
                result["guest"] = {"error": str(e)}
        result["machine"]["loadavg_end"] = \
            open("/proc/loadavg").read().split()[:3]
        result["runtime_seconds"] = time.time() - t_start
        progress("writing %s/benchmarks.{md,json} and bench-check-cost.svg"
                 % outdir)
        write_docs(result, outdir)
        el = time.time() - t_start
        print("make bench: finished in %d min %02d s (%s mode)" %
              (el // 60, el % 60, ctx.mode))
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
