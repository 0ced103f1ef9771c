#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The qguard authors
"""Differential runs against QEMU 7.2's tools.

For each seed, one random qcow2 image (cluster size, compat, refcount
width, extended L2 entries, lazy refcounts, zstd compression, metadata or
falloc preallocation, an external data file, raw or not, and a backing
file with data) is created twice, once for each tool, each copy with its
own backing and data files.  The same random steps go to both copies:
qemu-io and qemu-img on one, qguard-io and qguard-img on the other.  A
step is a batch of qemu-io commands (writes, zero writes with and without
unmap, discards, compressed writes, at aligned and unaligned places) or
one qemu-img command (resize, snapshot -c/-a/-d, amend, bitmap, convert,
commit with and without -d, rebase safe, unsafe and to no backing file,
check -r).  After every step the two images must agree: the same exit
status of the step, the same guest content (qemu-img compare), the same
virtual size, compat, refcount width, compression type, backing and data
file names, snapshots and bitmaps (qemu-img info); the backing files
must hold the same data; qemu-img check must find no corruption in
qguard's image or backing file nor a leak that QEMU's lacks; and
qguard-img's map (both formats), info, check and measure of qguard's
image must print what qemu-img's print.

QEMU 7.2 is not always right (docs/design.md lists where it damages an
image). A seed stops without failing when QEMU's image fails its own
check while qguard's passes, or QEMU marks its image corrupt; when
QEMU's guest content or exit status differs only because the step's
commands shared one qemu-io (the step rerun from the image before it,
one qemu-io per command, agrees with qguard: QEMU's compressed writes
keep state between commands, F20 in docs/robustness.md); when a QEMU
tool hangs; when a qemu-img command fails but still changes QEMU's
image; and at the documented differences of a command (a downgrade with
persistent bitmaps, which qguard refuses; a snapshot apply with bitmaps,
which QEMU refuses). A compressed write of several clusters that fails
on one of them is not generated: QEMU runs its clusters as parallel
tasks, so what it writes besides depends on their timing.

    tests/interop/differential.py --build=build [--seeds=0:100]
        [--mixed] [--map] [--dir=/dev/shm/qguard-differential]

--map also compares qemu-img map of the two copies (without host
offsets): which layer holds what, and what reads as zeros or data.  Where
QEMU leaves holes in its file (zeroed copy-on-write) qguard must too, so
this holds the tools to the same allocation decisions; it is an option
because the remaining differences are of map alone (listed under the
bug table of docs/robustness.md), not of the guest's data.

--mixed gives each step of qguard's copy to either tool at random, so the
tools read and change each other's images.  A failing seed keeps its
directory, with the steps in steps.json.  The last line is
"N passed, N failed".
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys

TIMEOUT = 120
QEMU_TOOLS = ("qemu-img", "qemu-io")
KNOWN_DIFFERENCES = (
    "Cannot downgrade an image with persistent dirty bitmaps",
)
# What QEMU's tools refuse and qguard's do (docs/bitmaps.md)
QEMU_ONLY_REFUSALS = (
    "Device has active dirty bitmaps",
)


class Stop(Exception):
    """The seed ends early and passes (a QEMU fault or known difference)."""


class Fail(Exception):
    """The seed found a difference that is qguard's."""


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        if cmd[0] in QEMU_TOOLS:
            raise Stop("%s hung: %s" % (cmd[0], " ".join(cmd[1:])))
        raise Fail("hung: " + " ".join(cmd))


class Seed:
    def __init__(self, args, seed):
        self.r = random.Random(seed)
        self.seed = seed
        self.dir = os.path.join(args.dir, str(seed))
        self.tools = {
            "qemu": ("qemu-img", "qemu-io"),
            "qguard": (os.path.join(args.build, "qguard-img"),
                       os.path.join(args.build, "qguard-io")),
        }
        self.mixed = args.mixed
        self.compare_map = args.map
        self.steps = []
        self.by_qemu = False
        self.kind, self.args = None, []

    # ---- the starting image ----

    def create(self):
        r = self.r
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.cs = r.choice([512, 1024, 4096, 65536, 65536, 2 << 20])
        compat = r.choice(["0.10", "1.1", "1.1"])
        opts = ["cluster_size=%d" % self.cs, "compat=" + compat]
        self.extl2 = (compat == "1.1" and self.cs >= 16384 and
                      r.random() < 0.3)
        if self.extl2:
            opts.append("extended_l2=on")
        if compat == "1.1" and r.random() < 0.2:
            opts.append("lazy_refcounts=on")
        if compat == "1.1" and r.random() < 0.3:
            opts.append("refcount_bits=%d" % r.choice([1, 2, 8, 32, 64]))
        if compat == "1.1" and r.random() < 0.3:
            opts.append("compression_type=zstd")
        self.size = (r.choice([1, 3, 16, 64]) << 20) + \
            r.choice([0, 0, 512, 12345 * 512])
        self.base = None
        if r.random() < 0.4:
            self.base = "base"
            self.make_backing(self.base, r.choice(
                [self.size, self.size // 2, self.size + (1 << 20)]))
        self.data_file = compat == "1.1" and r.random() < 0.15
        if self.data_file and not self.base and r.random() < 0.5:
            opts.append("data_file_raw=on")
        if (not self.base or self.extl2) and r.random() < 0.15:
            opts.append("preallocation=" + r.choice(["metadata", "falloc"]))
        self.img = {t: os.path.join(self.dir, t + ".qcow2")
                    for t in self.tools}
        self.pre_step = os.path.join(self.dir, "qemu-before-step.qcow2")
        # Each copy gets its own backing and data files, created alike, so
        # that commit and rebase change only their own tool's chain.
        for t in self.tools:
            o = list(opts)
            if self.base:
                o += ["backing_file=" + self.chain_file(self.base, t),
                      "backing_fmt=qcow2"]
            if self.data_file:
                o.append("data_file=" + self.chain_file("data", t, "raw"))
            p = run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                     ",".join(o), self.img[t], str(self.size)])
            if p.returncode:
                raise Fail("qemu-img create: " + p.stderr)
        shutil.copy(self.img["qemu"], os.path.join(self.dir, "start.qcow2"))

    def chain_file(self, stem, t, ext="qcow2"):
        return os.path.join(self.dir, "%s.%s.%s" % (stem, t, ext))

    def make_backing(self, stem, size):
        """One backing file per tool, with the same random data."""
        r = self.r
        size = max(size - size % 512, 65536)
        cmds = []
        for _ in range(r.randint(1, 8)):
            off = r.randrange(0, size) // 512 * 512
            n = min(r.choice([512, 4096, 65536, 300000]) // 512 * 512,
                    size - off)
            cmds += ["-c", "write -q -P %d %d %d" % (r.randrange(1, 255),
                                                     off, n)]
        for t in self.tools:
            base = self.chain_file(stem, t)
            run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(size)])
            run(["qemu-io", "-f", "qcow2"] + cmds + [base])

    # ---- steps ----

    def io_commands(self):
        r, cs, size = self.r, self.cs, self.size
        cmds = []
        for _ in range(r.randint(1, 25)):
            if r.random() < 0.3:
                off = r.randrange(0, size)
                n = r.randint(1, min(3 * cs + 1000, 1 << 20))
            else:
                off = r.randrange(0, size) // 512 * 512
                n = r.choice([512, 4096, cs, 2 * cs, 3 * cs // 2, 65536])
                n = max(n // 512 * 512, 512)
            n = min(n, size - off)
            if n <= 0:
                continue
            k = r.random()
            if k < 0.55:
                cmds.append("write -q -P %d %d %d" % (r.randrange(256),
                                                      off, n))
            elif k < 0.65:
                cmds.append("write -q -z %d %d" % (off, n))
            elif k < 0.75:
                cmds.append("write -q -z -u %d %d" % (off, n))
            elif k < 0.9:
                cmds.append("discard -q %d %d" % (off, n))
            elif not self.extl2:
                # one whole cluster: see the module comment
                off = off // cs * cs
                if off + cs <= size:
                    cmds.append("write -q -c -P %d %d %d" % (
                        r.randrange(256), off, cs))
        return cmds

    def next_step(self):
        r = self.r
        k = r.random()
        if k < 0.12:
            if r.random() < 0.8:
                new = self.size + r.choice([512, 65536, 1 << 20, 7 << 20,
                                            12345 * 512])
                args = [str(new)]
            else:
                new = max(512, (self.size - r.choice([512, 65536, 1 << 20]))
                          // 512 * 512)
                args = ["--shrink", str(new)]
            return "resize", args, new
        if k < 0.2:
            name = "s%d" % r.randrange(3)
            return "snapshot", [r.choice(["-c", "-a", "-d", "-c"]), name], None
        if k < 0.25:
            args = ["-O", "qcow2"] + (["-c"] if r.random() < 0.5 else [])
            opts = []
            if r.random() < 0.5:
                opts.append("cluster_size=%d" % r.choice(
                    [512, 4096, 65536, 1 << 20]))
            if r.random() < 0.3:
                opts.append("compat=0.10")
            if r.random() < 0.3:
                opts.append("refcount_bits=%d" % r.choice([1, 8, 64]))
            if opts:
                args += ["-o", ",".join(opts)]
            return "convert", args, None
        if k < 0.3:
            opt = r.choice(["compat=0.10", "compat=1.1", "lazy_refcounts=on",
                            "lazy_refcounts=off", "refcount_bits=%d" %
                            r.choice([1, 4, 16, 64])])
            return "amend", ["-o", opt], None
        if k < 0.33 and self.base:
            return "commit", ["-d"] if r.random() < 0.5 else [], None
        if k < 0.37:
            c = r.random()
            if c < 0.3:
                return "rebase", ["-b", ""], None
            if not os.path.exists(self.chain_file("base2", "qemu")):
                self.make_backing("base2", r.choice(
                    [self.size, self.size // 2, self.size + (1 << 20)]))
            return "rebase", (["-u"] if c < 0.6 else []) + \
                ["-b", "@base2@", "-F", "qcow2"], None
        if k < 0.39:
            return "check", ["-r", r.choice(["leaks", "all"])], None
        if k < 0.43:
            name = "b%d" % r.randrange(2)
            return "bitmap", r.choice([["--add", name], ["--remove", name],
                                       ["--clear", name], ["--disable", name],
                                       ["--enable", name]]), None
        return "io", self.io_commands(), None

    def command(self, tool, kind, args, t):
        qimg, qio = tool
        img = self.img[t]
        args = [self.chain_file("base2", t) if a == "@base2@" else a
                for a in args]
        if kind == "io":
            return [qio, "-f", "qcow2"] + \
                [x for c in args for x in ("-c", c)] + [img]
        if kind == "resize":
            return [qimg, "resize", "-q", "-f", "qcow2", img] + args
        if kind == "snapshot":
            return [qimg, "snapshot", "-q"] + args + [img]
        if kind == "convert":
            return [qimg, "convert", "-f", "qcow2"] + args + [img, img + ".new"]
        if kind == "amend":
            return [qimg, "amend", "-q", "-f", "qcow2"] + args + [img]
        if kind in ("commit", "rebase", "check"):
            return [qimg, kind, "-q", "-f", "qcow2"] + args + [img]
        return [qimg, "bitmap", "-f", "qcow2", args[0], img] + args[1:]

    def step(self):
        kind, args, new_size = self.next_step()
        if kind == "io" and not args:
            return
        self.steps.append([kind, args])
        self.kind, self.args = kind, args
        qguard_tool = self.tools["qguard"]
        self.by_qemu = self.mixed and self.r.random() < 0.5
        if self.by_qemu:
            qguard_tool = self.tools["qemu"]
        shutil.copy(self.img["qemu"], self.pre_step)
        status, output = {}, {}
        for t, tool in (("qemu", self.tools["qemu"]),
                        ("qguard", qguard_tool)):
            p = run(self.command(tool, kind, args, t))
            status[t] = p.returncode
            output[t] = self.own_output(t, tool, p)
            if kind == "convert" and p.returncode == 0:
                os.replace(self.img[t] + ".new", self.img[t])
            if t == "qguard" and any(d in p.stderr
                                     for d in KNOWN_DIFFERENCES):
                raise Stop("known difference: " + p.stderr.strip())
            if t == "qemu" and p.returncode and any(
                    d in p.stderr for d in QEMU_ONLY_REFUSALS):
                raise Stop("known difference: " + p.stderr.strip())
            if t == "qemu" and "Marking image as corrupt" in p.stderr:
                # QEMU's own overlap check stopped it damaging its image
                # (F20 in docs/robustness.md, by a compressed write)
                raise Stop("QEMU marked its image corrupt")
            if t == "qguard" and (p.returncode == 0) != (status["qemu"] == 0):
                if kind == "io" and not self.by_qemu and \
                        not self.data_file and \
                        self.one_per_process()[1] == (p.returncode == 0):
                    raise Stop("QEMU's exit status differs only when the "
                               "commands share one qemu-io")
                raise Fail("%s: exit %d, QEMU's %d: %s" % (
                    kind, p.returncode, status["qemu"], p.stderr.strip()))
        if kind != "io" and status["qemu"] and not self.by_qemu and \
                self.allocation(self.pre_step) != \
                self.allocation(self.img["qemu"]) != \
                self.allocation(self.img["qguard"]):
            # QEMU refuses a zstd downgrade after it has expanded the zero
            # clusters (docs/qemu-img-commands.md); the copies part there.
            raise Stop("QEMU's %s failed and still changed its image" % kind)
        if output["qemu"] != output["qguard"] and not self.by_qemu:
            raise Fail("%s printed %r, QEMU's tool %r" % (
                kind, output["qguard"], output["qemu"]))
        if kind == "resize" and status["qemu"] == 0:
            self.size = new_size
        if kind == "convert" and status["qemu"] == 0:
            self.cs = 65536     # qemu-img create's default
            for o in args:
                for kv in o.split(","):
                    if kv.startswith("cluster_size="):
                        self.cs = int(kv.split("=")[1])
            self.extl2 = False
            self.base = None
            self.data_file = False
        if kind == "rebase" and status["qemu"] == 0:
            self.base = "base2" if args[-1] == "qcow2" else None
        self.compare()

    # ---- after every step ----

    def check(self, t):
        return run(["qemu-img", "check", "-f", "qcow2", self.img[t]])

    def compare(self):
        q, g = self.check("qemu"), self.check("qguard")
        if g.returncode not in (0, 3) and self.by_qemu:
            raise Stop("QEMU's tool damaged qguard's copy (--mixed)")
        if g.returncode not in (0, 3):
            raise Fail("qemu-img check of qguard's image:\n" + g.stdout +
                       g.stderr)
        if q.returncode not in (0, 3):
            raise Stop("QEMU's image fails its check, qguard's passes")
        if g.returncode == 3 and q.returncode != 3:
            raise Fail("qguard's image leaks, QEMU's does not:\n" + g.stdout)
        if self.base:
            self.compare_bases()
        if self.differ(self.img["qemu"]):
            if self.kind == "io" and not self.by_qemu and \
                    not self.data_file and \
                    not self.differ(self.one_per_process()[0]):
                raise Stop("QEMU's content differs only when the commands "
                           "share one qemu-io (docs/design.md)")
            raise Fail("guest content differs")
        self.compare_reports()
        alloc = {t: self.allocation(self.img[t]) for t in self.img} \
            if self.compare_map else {}
        if alloc and alloc["qemu"] != alloc["qguard"]:
            raise Fail("qemu-img map differs:\n%r (QEMU) against\n%r" % (
                alloc["qemu"], alloc["qguard"]))
        info = {t: self.summary(t) for t in self.img}
        if info["qemu"] != info["qguard"]:
            raise Fail("qemu-img info differs: %r (QEMU) against %r" % (
                info["qemu"], info["qguard"]))

    def compare_bases(self):
        """After commit, the backing files must agree as well."""
        base = {t: self.chain_file(self.base, t) for t in self.tools}
        g = run(["qemu-img", "check", "-f", "qcow2", base["qguard"]])
        if g.returncode not in (0, 3) and not self.by_qemu:
            raise Fail("qemu-img check of qguard's backing file:\n" +
                       g.stdout + g.stderr)
        p = run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2",
                 base["qemu"], base["qguard"]])
        if p.returncode:
            raise Fail("backing file content differs")

    def own_output(self, t, tool, p):
        """What a tool printed, with its name and its copy's names out."""
        out = p.stdout + p.stderr
        for name in tool:
            out = out.replace(os.path.basename(name), "TOOL")
        out = out.replace(os.path.join(self.dir, t + "."), "IMG.") \
                 .replace(".%s." % t, ".TOOL.")
        # QEMU names nodes it creates by a counter of its own, and may have
        # put a cluster elsewhere (docs/design.md)
        out = re.sub(r"'#block[0-9]+'", "'#blockN'", out)
        return re.sub(r"offset 0x[0-9a-f]+", "offset 0xN", out)

    def compare_reports(self):
        """qguard-img must report qguard's image as qemu-img does."""
        img = self.img["qguard"]
        for cmd in (["map", "--output=json"], ["map"],
                    ["info", "--output=json"], ["check", "--output=json"],
                    ["measure", "-O", "qcow2", "--output=json"]):
            out = {}
            for t in self.tools:
                p = run([self.tools[t][0]] + cmd + ["-f", "qcow2", img])
                name = os.path.basename(self.tools[t][0])
                out[t] = (p.returncode, p.stdout.replace(name, "TOOL"),
                          p.stderr.replace(name, "TOOL"))
            if out["qemu"] != out["qguard"]:
                raise Fail("qguard-img %s differs:\n%r\nagainst qemu-img's\n%r"
                           % (" ".join(cmd), out["qguard"], out["qemu"]))

    def differ(self, qemu_img):
        p = run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2",
                 qemu_img, self.img["qguard"]])
        return p.returncode != 0

    def one_per_process(self):
        """The last step again from the image before it, through one
        qemu-io per command: QEMU 7.2's compressed writes damage data only
        through state kept between commands (F20 in docs/robustness.md)."""
        img = os.path.join(self.dir, "one-per-process.qcow2")
        ok = True
        shutil.copy(self.pre_step, img)
        for c in self.args:
            ok = run(["qemu-io", "-f", "qcow2", "-c", c, img]).returncode == 0 \
                and ok
        return img, ok

    def allocation(self, img):
        """qemu-img map without host offsets: which layer holds what."""
        runs = []
        for e in json.loads(run(["qemu-img", "map", "--output=json",
                                 img]).stdout or "[]"):
            k = (e["depth"], e["present"], e["zero"], e["data"])
            if runs and runs[-1][2] == k:
                runs[-1][1] += e["length"]
            else:
                runs.append([e["start"], e["length"], k])
        return runs

    def summary(self, t):
        j = json.loads(run(["qemu-img", "info", "--output=json",
                            self.img[t]]).stdout)
        fs = j.get("format-specific", {}).get("data", {})

        def own(name):
            return name and os.path.basename(name).replace(".%s." % t,
                                                           ".TOOL.")
        return (j.get("virtual-size"), fs.get("compat"),
                own(j.get("backing-filename")), own(fs.get("data-file")),
                fs.get("data-file-raw"), fs.get("compression-type"),
                fs.get("refcount-bits"), fs.get("lazy-refcounts"),
                sorted((b["name"], tuple(b["flags"]))
                       for b in fs.get("bitmaps", [])),
                sorted(s["name"] for s in j.get("snapshots", [])))

    def run(self):
        self.create()
        for _ in range(self.r.randint(3, 12)):
            self.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--seeds", default="0:100")
    ap.add_argument("--mixed", action="store_true")
    ap.add_argument("--map", action="store_true")
    ap.add_argument("--dir", default="/dev/shm/qguard-differential")
    args = ap.parse_args()
    first, end = (int(x) for x in args.seeds.split(":"))
    passed = failed = 0
    for seed in range(first, end):
        s = Seed(args, seed)
        try:
            s.run()
            shutil.rmtree(s.dir, ignore_errors=True)
            passed += 1
        except Stop as e:
            print("seed %d: stopped: %s" % (seed, e))
            shutil.rmtree(s.dir, ignore_errors=True)
            passed += 1
        except Fail as e:
            print("seed %d: FAILED after %d steps: %s" % (seed, len(s.steps),
                                                          e))
            with open(os.path.join(s.dir, "steps.json"), "w") as f:
                json.dump(s.steps, f, indent=1)
            failed += 1
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
