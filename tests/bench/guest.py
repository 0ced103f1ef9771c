# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The qguard authors
"""The 2014 guest benchmark: a TCG guest runs `dd if=/dev/zero of=/dev/vda
bs=65536` over its virtio disk, which is an NBD export of a fresh qcow2
image with 512-byte clusters, served by nbdkit with the qguard plugin or by
QEMU's qemu-nbd.  The server runs under `perf record` from its start to its
exit; its share of samples in the overlap functions is the figure.

The guest pieces (Debian kernel from build/guest-cache, static busybox
initramfs, module loading in passes) follow tests/qemu-iotests/305.
"""

import json
import os
import re
import shutil
import subprocess
import time

import profiling as P

MODULES = ["virtio", "virtio_ring", "virtio_pci_legacy_dev",
           "virtio_pci_modern_dev", "virtio_pci", "virtio_blk"]


class GuestError(Exception):
    pass


def kernel_package():
    r = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                       capture_output=True, text=True)
    for line in r.stdout.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-[0-9]\S*)", line)
        if m:
            return m.group(1)
    return None


def fetch_kernel(build, log):
    """Directory with vmlinuz and modules/ (the cache test 305 fills);
    downloads the kernel package on first use."""
    cache = os.path.join(build, "guest-cache")
    pkg = kernel_package()
    if not pkg and os.getuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        pkg = kernel_package()
    if not pkg:
        # No apt metadata: any cached kernel will do.
        if os.path.isdir(cache):
            for d in sorted(os.listdir(cache)):
                if os.path.isfile(os.path.join(cache, d, "vmlinuz")):
                    return os.path.join(cache, d)
        raise GuestError("cannot resolve linux-image-amd64 (apt-get update?)")
    d = os.path.join(cache, pkg)
    if os.path.isfile(os.path.join(d, "vmlinuz")):
        return d
    log("downloading %s for the guest" % pkg)
    os.makedirs(cache, exist_ok=True)
    tmp = os.path.join(cache, "tmp.bench.%d" % os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        r = subprocess.run(["apt-get", "download", pkg], cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode:
            raise GuestError("apt-get download %s failed: %s" %
                             (pkg, r.stderr.strip()))
        deb = [f for f in os.listdir(tmp) if f.endswith(".deb")][0]
        sh = ("dpkg-deb --fsys-tarfile '%s' | tar -x --wildcards "
              "'./boot/vmlinuz-*' './lib/modules/*/modules.builtin' "
              "'./lib/modules/*/kernel/drivers/virtio/*' "
              "'./lib/modules/*/kernel/drivers/block/virtio_blk.ko*'" % deb)
        subprocess.run(["sh", "-c", sh], cwd=tmp, check=True)
        out = os.path.join(tmp, "out")
        os.makedirs(os.path.join(out, "modules"))
        boot = os.path.join(tmp, "boot")
        shutil.copy(os.path.join(boot, sorted(os.listdir(boot))[0]),
                    os.path.join(out, "vmlinuz"))
        found = {}
        for root, _, files in os.walk(os.path.join(tmp, "lib")):
            for f in files:
                found[f] = os.path.join(root, f)
        for m in MODULES:
            dst = os.path.join(out, "modules", m + ".ko")
            if m + ".ko" in found:
                shutil.copy(found[m + ".ko"], dst)
            elif m + ".ko.xz" in found:
                with open(dst, "wb") as f:
                    subprocess.run(["xz", "-dc", found[m + ".ko.xz"]],
                                   stdout=f, check=True)
            elif m + ".ko.zst" in found:
                with open(dst, "wb") as f:
                    subprocess.run(["zstd", "-qdc", found[m + ".ko.zst"]],
                                   stdout=f, check=True)
        shutil.rmtree(d, ignore_errors=True)
        os.rename(out, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
pending="@MODULES@"
for pass in 1 2 3 4 5 6; do
    left=""
    for m in $pending; do
        [ -f /lib/modules/$m.ko ] || continue
        insmod /lib/modules/$m.ko 2>/dev/null || left="$left $m"
    done
    pending=$left
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || { echo "QGUARD-BENCH: no /dev/vda"; poweroff -f; }
echo "QGUARD-BENCH: size $(blockdev --getsize64 /dev/vda)"
p=1
while [ $p -le @PASSES@ ]; do
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/zero of=/dev/vda bs=65536 2>/tmp/dd.err
    sync
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "QGUARD-BENCH: pass $p $t0 $t1 $(grep -c 'records out' /tmp/dd.err)"
    p=$((p + 1))
done
echo "QGUARD-BENCH: done"
poweroff -f
"""


def build_initrd(work, kdir, passes):
    root = os.path.join(work, "initramfs")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib/modules"):
        os.makedirs(os.path.join(root, d))
    busybox = shutil.which("busybox")
    if not busybox:
        raise GuestError("busybox not installed (run ./configure)")
    if subprocess.run(["ldd", busybox], capture_output=True).returncode == 0:
        raise GuestError("%s is not static (install busybox-static)" % busybox)
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    for f in os.listdir(os.path.join(kdir, "modules")):
        shutil.copy(os.path.join(kdir, "modules", f),
                    os.path.join(root, "lib", "modules", f))
    with open(os.path.join(root, "init"), "w") as f:
        f.write(INIT.replace("@MODULES@", " ".join(MODULES))
                .replace("@PASSES@", str(passes)))
    os.chmod(os.path.join(root, "init"), 0o755)
    initrd = os.path.join(work, "initrd.gz")
    subprocess.run("cd '%s' && find . | cpio -o -H newc --quiet | gzip -1 "
                   "> '%s'" % (root, initrd), shell=True, check=True)
    return initrd


def wait_for(path, proc, secs=30, nonempty=True):
    end = time.time() + secs
    while time.time() < end:
        if os.path.exists(path) and (not nonempty or
                                     os.path.getsize(path) > 0):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def proc_cpu(pid):
    """user+sys seconds of a live process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, ValueError, IndexError):
        return None, None


GUEST_ROWS = [
    ("nbd-cached", "qguard export, windowed, cached", "qguard", []),
    ("nbd-all", "qguard export, windowed, all", "qguard",
     ["overlap-check=all"]),
    ("nbd-linear", "qguard export, linear", "qguard",
     ["overlap-check.algorithm=linear"]),
    ("qemu-nbd", "qemu-nbd 7.2, cached (default)", "qemu", []),
    ("qemu-nbd-none", "qemu-nbd 7.2, none", "qemu", ["overlap-check=none"]),
]


def run_one(ctx, row, kdir, initrd, size, passes, progress):
    rid, label, engine, opts = row
    work = ctx.tmp
    img = os.path.join(work, "guest-%s.qcow2" % rid)
    sock = os.path.join(work, "nbd.sock")
    pidfile = os.path.join(work, "nbd.pid")
    data = os.path.join(work, "guest-%s.perf" % rid)
    stats = os.path.join(work, "guest-%s.stats" % rid)
    console = os.path.join(work, "guest-%s.console" % rid)
    slog = os.path.join(work, "guest-%s.server.log" % rid)
    for f in (img, sock, pidfile, data, stats, console):
        if os.path.exists(f):
            os.unlink(f)
    tool = ctx.qguard_img if engine == "qguard" else "qemu-img"
    subprocess.run([tool, "create", "-q", "-f", "qcow2", "-o",
                    "cluster_size=512", img, str(size)], check=True)
    env = dict(os.environ)
    if engine == "qguard":
        env["QGUARD_OVERLAP_STATS_FILE"] = stats
        server = ["nbdkit", "-f", "-U", sock, "-P", pidfile, ctx.plugin,
                  "file=" + img] + opts
    else:
        server = ["qemu-nbd", "-t", "-k", sock, "--pid-file=" + pidfile,
                  "--cache=writeback", "--image-opts",
                  ",".join(["driver=qcow2", "file.filename=" + img] + opts)]
    cmd = P.perf_record_cmd(ctx.perf_event, ctx.perf_freq, data) + server
    with open(slog, "wb") as lf:
        perf = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                env=env)
    ctx.children.append(perf)
    try:
        if not wait_for(pidfile, perf) or not wait_for(sock, perf, 5,
                                                       nonempty=False):
            raise GuestError("%s did not start: %s" %
                             (server[0], open(slog).read()[-400:]))
        spid = int(open(pidfile).read().split()[0])
        qemu = ["qemu-system-x86_64", "-nodefaults", "-no-user-config",
                "-machine", "pc,accel=tcg", "-m", "256", "-smp", "1",
                "-display", "none", "-no-reboot",
                "-serial", "file:" + console,
                "-kernel", os.path.join(kdir, "vmlinuz"), "-initrd", initrd,
                "-append", "console=ttyS0 panic=-1 quiet loglevel=1",
                "-drive", "file=nbd+unix:///?socket=%s,format=raw,if=virtio"
                % sock]
        t = P.run_timed(qemu, stdout_path=os.path.join(work, "qemu.log"),
                        timeout=ctx.guest_timeout)
        user, sys_ = proc_cpu(spid)
        try:
            os.kill(spid, 15)
        except ProcessLookupError:
            pass
        perf.wait(120)
    finally:
        P.stop_process(perf, sig=2)
        ctx.children.remove(perf)
    text = open(console, errors="replace").read().replace("\r", "")
    pass_times = []
    for m in re.finditer(r"QGUARD-BENCH: pass (\d+) ([\d.]+) ([\d.]+)", text):
        pass_times.append(float(m.group(3)) - float(m.group(2)))
    done = "QGUARD-BENCH: done" in text
    agg = P.perf_samples(data)
    syms = ctx.overlap_syms if engine == "qguard" else P.QEMU_SET
    share = P.perf_share(agg, syms, ctx.upkeep_syms.get("w2", frozenset())
                         if engine == "qguard" else frozenset())
    counters = None
    if os.path.exists(stats):
        lines = [l for l in open(stats).read().splitlines() if l.strip()]
        recs = [json.loads(l) for l in lines]
        recs = [r for r in recs if r.get("checks")] or recs
        counters = recs[-1] if recs else None
    chk = subprocess.run(["qemu-img", "check", "-U", img],
                         capture_output=True, text=True)
    res = {
        "id": rid, "label": label, "engine": engine,
        "options": ",".join(opts) or "(defaults)",
        "vm_wall": t["wall"], "vm_user": t["user"], "vm_sys": t["sys"],
        "pass_seconds": pass_times,
        "completed": done and len(pass_times) == passes,
        "server_user": user, "server_sys": sys_,
        "perf": share, "counters": counters,
        "image_check": chk.stdout.strip().splitlines()[0]
        if chk.stdout.strip() else chk.stderr.strip(),
        "image_check_rc": chk.returncode,
    }
    for f in (img, data):
        if os.path.exists(f):
            os.unlink(f)
    return res


def run_guest(ctx, size, passes, rows, progress):
    kdir = fetch_kernel(ctx.build, progress)
    initrd = build_initrd(ctx.tmp, kdir, passes)
    out = []
    for row in GUEST_ROWS:
        if row[0] not in rows:
            continue
        progress("guest: %s, %d MiB disk, %d dd passes" %
                 (row[1], size >> 20, passes))
        r = run_one(ctx, row, kdir, initrd, size, passes, progress)
        out.append(r)
        ps = r["perf"]
        progress("guest: %s: VM %.1f s, passes %s s, overlap %.4f %% of "
                 "%d samples%s" % (row[1], r["vm_wall"],
                                   "/".join("%.1f" % x for x in
                                            r["pass_seconds"]),
                                   ps["share"] or 0.0, ps["samples"],
                                   "" if r["completed"] else
                                   " (GUEST DID NOT COMPLETE)"))
    return {"kernel": os.path.basename(kdir), "disk_bytes": size,
            "perf_freq": ctx.perf_freq if ctx.perf_event == "cpu-clock"
            else None,
            "passes": passes, "rows": out}
