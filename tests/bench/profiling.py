# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The qguard authors
"""Timing, perf and callgrind helpers for tests/bench/bench.py.

Which functions count as "overlap checking":

  qguard  every function compiled from block/qcow2-overlap*.c (found with nm
          in libqguard.a) plus qcow2_overlap_hit (the write path's entry),
          qcow2_refuse_overlap, qcow2_pre_write_overlap_check and
          qcow2_linear_overlap_check.
  QEMU    qcow2_check_metadata_overlap and qcow2_pre_write_overlap_check
          (dynamic symbols of the stripped Debian binaries).

Within that set, "upkeep" is the part reached through
qcow2_metadata_map_enter/remove (and map set-up/tear-down), the 2014
letter's qcow2_metadata_list_enter; the rest is the check proper.

perf attributes a sample to the function the CPU was in (self time), so
library code the map calls (memset, malloc) is not counted there; callgrind
gives inclusive instruction counts through the call graph, so it is.
"""

import os
import re
import signal
import subprocess
import time

QGUARD_NAMED = {
    "qcow2_overlap_hit",
    "qcow2_refuse_overlap",
    "qcow2_pre_write_overlap_check",
    "qcow2_linear_overlap_check",
}
QEMU_SET = {"qcow2_check_metadata_overlap", "qcow2_pre_write_overlap_check"}
CHECK_ENTRIES = {
    "qcow2_overlap_hit",
    "qcow2_refuse_overlap",
    "qcow2_pre_write_overlap_check",
    "qcow2_check_metadata_overlap",
    "qcow2_linear_overlap_check",
    "qcow2_metadata_map_check",
}
OVERLAP_FILE_RE = re.compile(r"qcow2-overlap[^/]*\.c$")


def base_name(sym):
    """range_apply.part.0 -> range_apply; foo'2 -> foo."""
    sym = sym.split("'")[0]
    return sym.split(".")[0] if not sym.startswith(".") else sym


# ---- running a command -----------------------------------------------------

def run_timed(cmd, stdin_path=None, stdout_path=os.devnull, env=None,
              cwd=None, timeout=None):
    """Run cmd; return dict(wall, user, sys, rc).  user/sys come from
    wait4() on the child (all its threads)."""
    fin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    fout = open(stdout_path, "wb")
    try:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=fin, stdout=fout,
                             stderr=subprocess.STDOUT, env=env, cwd=cwd)
        deadline = t0 + timeout if timeout else None
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if stdin_path:
            fin.close()
        fout.close()
    return {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime,
            "rc": p.returncode}


# ---- symbol sets -------------------------------------------------------------

def qguard_overlap_symbols(build):
    """Names of the functions compiled from block/qcow2-overlap*.c, plus the
    three named entry points.  Returns (set, warnings)."""
    lib = os.path.join(build, "libqguard.a")
    out = subprocess.run(["nm", "-A", "--defined-only", lib],
                         capture_output=True, text=True, check=True).stdout
    overlap, other = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[-2] not in ("t", "T"):
            continue
        member = parts[0].split(":")[-2] if parts[0].count(":") >= 2 else ""
        sym = parts[-1]
        if "qcow2-overlap" in member:
            overlap.add(sym)
        else:
            other.add(sym)
    warn = []
    clash = sorted(overlap & other)
    if clash:
        warn.append("symbols defined both in the overlap files and elsewhere "
                    "(perf counts them as overlap): " + ", ".join(clash))
    return overlap | QGUARD_NAMED, warn


# ---- perf ------------------------------------------------------------------------

def perf_event():
    """cycles:u where the machine has a PMU, else cpu-clock."""
    try:
        r = subprocess.run(["perf", "stat", "-x,", "-e", "cycles:u", "true"],
                           capture_output=True, text=True, timeout=30)
        for line in r.stderr.splitlines():
            if "cycles" in line and not line.startswith("<not"):
                return "cycles:u", True
    except (OSError, subprocess.SubprocessError):
        pass
    return "cpu-clock", False


PERF_LINE = re.compile(r"^\s*(\S+)\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")


def perf_samples(data, comm=None):
    """Aggregate `perf script` output: {(sym, dso, kernel): count}, only
    samples of processes named comm when given (a loop of runs under one
    perf record also samples the shell)."""
    r = subprocess.run(["perf", "script", "-i", data, "-F",
                        "comm,ip,sym,dso"],
                       capture_output=True, text=True)
    agg = {}
    comm = comm[:15] if comm else None
    for line in r.stdout.splitlines():
        m = PERF_LINE.match(line)
        if not m or (comm and m.group(1) != comm):
            continue
        ip = int(m.group(2), 16)
        sym = m.group(3).split("+0x")[0]
        dso = m.group(4)
        kernel = ip >= 0xffff800000000000 or dso.startswith("[kernel")
        key = (sym, os.path.basename(dso), kernel)
        agg[key] = agg.get(key, 0) + 1
    return agg


def merge_counts(a, b):
    for k, v in b.items():
        a[k] = a.get(k, 0) + v
    return a


def perf_record_cmd(event, freq, data):
    return ["perf", "record", "-q", "-e", event, "-F", str(freq), "-o", data,
            "--"]


def perf_share(agg, overlap_syms, upkeep_syms=frozenset()):
    """Share of samples in the overlap functions."""
    total = user = chk = upk = 0
    top = {}
    for (sym, dso, kernel), n in agg.items():
        total += n
        if not kernel:
            user += n
        if not kernel and sym in overlap_syms:
            if base_name(sym) in upkeep_syms:
                upk += n
            else:
                chk += n
            top[sym] = top.get(sym, 0) + n
    ovl = chk + upk
    return {
        "samples": total, "user_samples": user,
        "overlap_samples": ovl, "check_samples": chk, "upkeep_samples": upk,
        "share": 100.0 * ovl / total if total else None,
        "share_user": 100.0 * ovl / user if user else None,
        "check_share": 100.0 * chk / total if total else None,
        "upkeep_share": 100.0 * upk / total if total else None,
        "top_overlap": sorted(top.items(), key=lambda kv: -kv[1])[:8],
        "top_all": [(s if not k else s + " [k]", n) for (s, d, k), n in
                    sorted(agg.items(), key=lambda kv: -kv[1])[:10]],
    }


# ---- callgrind ---------------------------------------------------------------------

def callgrind_cmd(out):
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
            "--compress-strings=no", "--compress-pos=no", "-q"]


def parse_callgrind(path):
    """Return (total, funcs, edges).  funcs: {(file, name): self_Ir};
    edges: {(caller_key, callee_key): inclusive_Ir}."""
    total = 0
    funcs, edges, ncalls = {}, {}, {}
    fl = fi = None
    fn = None
    cfile = cfn = None
    pending_call = False
    names = {"f": {}, "n": {}}

    def name_of(val, space="f"):
        # Tolerate name compression "(id) name" / "(id)": files and
        # functions have separate id spaces.
        m = re.match(r"^\((\d+)\)(?:\s(.*))?$", val)
        if m:
            if m.group(2) is not None:
                names[space][m.group(1)] = m.group(2)
                return m.group(2)
            return names[space].get(m.group(1), val)
        return val

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                ir = int(parts[1]) if len(parts) > 1 else 0
                if pending_call:
                    callee = (cfile if cfile is not None else fl, cfn)
                    key = ((fl, fn), callee)
                    edges[key] = edges.get(key, 0) + ir
                    ncalls[key] = ncalls.get(key, 0) + call_count
                    pending_call = False
                    cfile = None
                else:
                    k = (fl, fn)
                    funcs[k] = funcs.get(k, 0) + ir
                continue
            if line.startswith("fl="):
                fl = fi = name_of(line[3:])
            elif line.startswith(("fi=", "fe=")):
                fi = name_of(line[3:])
            elif line.startswith("fn="):
                fn = base_name(name_of(line[3:], "n"))
                funcs.setdefault((fl, fn), 0)
            elif line.startswith(("cfi=", "cfl=")):
                cfile = name_of(line[4:])
            elif line.startswith("cfn="):
                cfn = base_name(name_of(line[4:], "n"))
            elif line.startswith("calls="):
                pending_call = True
                call_count = int(line[6:].split()[0])
            elif line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    # A callee named without its file: resolve through the definitions.
    by_name = {}
    for (f, n) in funcs:
        by_name.setdefault(n, set()).add(f)
    fixed, fcalls = {}, {}
    for (caller, (cf, cn)), v in edges.items():
        n = ncalls[(caller, (cf, cn))]
        if (cf, cn) not in funcs and len(by_name.get(cn, ())) == 1:
            cf = next(iter(by_name[cn]))
        fixed[(caller, (cf, cn))] = fixed.get((caller, (cf, cn)), 0) + v
        fcalls[(caller, (cf, cn))] = fcalls.get((caller, (cf, cn)), 0) + n
    return total, funcs, fixed, fcalls


def callgrind_share(path, engine, overlap_syms=None):
    """Instruction share of overlap checking from a callgrind profile.

    Cost of the overlap set S = inclusive cost of every call that enters S
    from outside it, grouped by the entry function: check entries vs
    upkeep (map enter/remove, set-up, tear-down)."""
    total, funcs, edges, ncalls = parse_callgrind(path)

    if engine == "qemu":
        def in_s(k):
            return k[1] in QEMU_SET
    else:
        def in_s(k):
            return bool(k[0] and OVERLAP_FILE_RE.search(k[0])) or \
                k[1] in QGUARD_NAMED

    entry, entry_calls = {}, {}
    for (caller, callee), v in edges.items():
        if in_s(callee) and not in_s(caller):
            entry[callee[1]] = entry.get(callee[1], 0) + v
            entry_calls[callee[1]] = entry_calls.get(callee[1], 0) + \
                ncalls[(caller, callee)]
    check = sum(v for n, v in entry.items() if n in CHECK_ENTRIES)
    upkeep = sum(v for n, v in entry.items() if n not in CHECK_ENTRIES)
    # Cross-check: self cost of S plus calls out of S.
    alt = sum(v for k, v in funcs.items() if in_s(k)) + \
        sum(v for (a, b), v in edges.items() if in_s(a) and not in_s(b))

    # Functions of S reachable only from upkeep entries (for perf's split).
    succ = {}
    for (a, b) in edges:
        if in_s(a) and in_s(b):
            succ.setdefault(a[1], set()).add(b[1])

    def reach(roots):
        seen, todo = set(), list(roots)
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            todo.extend(succ.get(n, ()))
        return seen
    from_check = reach([n for n in entry if n in CHECK_ENTRIES])
    from_upkeep = reach([n for n in entry if n not in CHECK_ENTRIES])
    upkeep_only = sorted(from_upkeep - from_check)

    selfs = sorted(((k[1], v) for k, v in funcs.items() if in_s(k) and v),
                   key=lambda kv: -kv[1])[:8]
    top = sorted(((k[1], v) for k, v in funcs.items() if v),
                 key=lambda kv: -kv[1])[:10]
    return {
        "total_ir": total, "overlap_ir": check + upkeep, "check_ir": check,
        "upkeep_ir": upkeep, "overlap_ir_selfsum": alt,
        "share": 100.0 * (check + upkeep) / total if total else None,
        "check_share": 100.0 * check / total if total else None,
        "upkeep_share": 100.0 * upkeep / total if total else None,
        "entries": sorted(entry.items(), key=lambda kv: -kv[1]),
        "entry_calls": entry_calls,
        "check_calls": sum(v for n, v in entry_calls.items()
                           if n in CHECK_ENTRIES),
        "upkeep_only_functions": upkeep_only,
        "top_overlap_self": selfs,
        "top_self": top,
    }


def stop_process(p, sig=signal.SIGTERM, timeout=60):
    """Signal a process we started and reap it."""
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode
