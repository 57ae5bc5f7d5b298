#!/usr/bin/env python3
"""Profile one LB of the suite under one workload, in the same topology as bench/run.sh.

    bench/run.sh is the way to compare; this is the way to see where an LB's time goes:
    python3 bench/suite/profile.py --lb sluice-uring-splice --workload keepalive --tool perf
    python3 bench/suite/profile.py --lb haproxy-1t --workload close --tool strace
    python3 bench/suite/profile.py --lb sluice-udp-uring --workload udp-bulk --tool strace

--tool perf   : `perf record -g` on the LB's processes during the run, then `perf report`
                (top symbols, children excluded) into OUT/perf-LB-WORKLOAD.txt
--tool strace : `strace -c -f` on the LB's processes during the run (slows the LB down a lot:
                read the syscall *counts per request*, not the throughput)
--tool syscalls : `perf stat -e 'syscalls:sys_enter_*'` on the LB's processes (system calls
                counted in the kernel: far less slow-down than strace; per request = count ÷
                the requests of the run, printed with the counts)
--tool allocs : `perf stat` of uprobes on libc's malloc/calloc/realloc in the LB's processes,
                after the 1 s warm-up (sluice uses the system allocator): allocations per
                request or connection after warm-up; the probes are removed at the end
--tool none   : just the run (throughput and LB CPU), e.g. to check a change
Run as root; removes its namespaces and processes on exit like the suite.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as suite  # noqa: E402
from netns import Topology  # noqa: E402
import report  # noqa: E402


LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
ALLOC_FNS = ["malloc", "calloc", "realloc"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lb", required=True)
    ap.add_argument("--workload", default="keepalive", choices=list(suite.WORKLOADS))
    ap.add_argument("--tool", default="perf", choices=["perf", "strace", "syscalls", "allocs", "none"])
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--call-graph", default="fp", choices=["fp", "dwarf"],
                    help="perf's call graphs: frame pointers, or DWARF unwinding (sees through libc)")
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--out", default="/tmp")
    args = ap.parse_args()
    args.sluice = os.path.abspath(args.sluice)
    args.only = args.lb
    lb = next(x for x in suite.make_lbs(args) if x.name == args.lb)
    tmp = tempfile.mkdtemp(prefix="sluice-prof-")
    os.chmod(tmp, 0o755)
    topo = Topology(os.getpid())
    tool = None
    handle = None
    try:
        topo.up()
        suite.start_pods(topo, tmp)
        pod_pids = topo.pids(topo.pod)
        handle = lb.start(topo, tmp)
        suite.wait_ready(topo, lb)
        lb_pids = topo.pids(topo.node)
        if suite.WORKLOADS[args.workload][0] in suite.UDP_KINDS:
            suite.run_udpgen(topo, lb.udp_target[0], lb.udp_target[1], suite.WORKLOADS["udp-dns"][1], 1)
        else:
            suite.run_wrk(topo, lb.target[0], lb.target[1], suite.WORKLOADS["keepalive"][1], 1)
        base = f"{args.out}/{args.tool}-{args.lb}-{args.workload}"
        if args.tool == "perf":
            tool = subprocess.Popen(["perf", "record", "--call-graph", args.call_graph, "-o", base + ".data", "-p",
                                     ",".join(map(str, lb_pids)), "--", "sleep", str(args.duration)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif args.tool == "strace":
            cmd = ["strace", "-c", "-f", "-o", base + ".txt"]
            for p in lb_pids:
                cmd += ["-p", str(p)]
            tool = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        elif args.tool in ("syscalls", "allocs"):
            # allocs: libc's malloc/calloc/realloc entries (uprobes; the process is Rust on
            # the system allocator), counted after the 1 s warm-up above.
            events = "syscalls:sys_enter_*"
            if args.tool == "allocs":
                for fn in ALLOC_FNS:
                    subprocess.run(["perf", "probe", "-q", "-x", LIBC, "--add", fn],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                events = ",".join(f"probe_libc:{fn}" for fn in ALLOC_FNS)
            tool = subprocess.Popen(["perf", "stat", "-x", ",", "-o", base + ".txt", "-e", events,
                                     "-p", ",".join(map(str, lb_pids)), "--", "sleep", str(args.duration + 2)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        res = suite.measure(topo, lb, args.workload, args.duration, lb_pids, pod_pids)
        res.update({"lb": lb.name, "kind": lb.kind, "workload": args.workload, "rep": 0, "services": 1})
        print(report.one_line(res))
        if tool is not None:
            if args.tool == "strace":
                tool.send_signal(2)  # SIGINT: strace detaches and writes its summary
            tool.wait(60)
        if args.tool in ("syscalls", "allocs"):
            units = res.get("units") or res.get("requests") or 0
            rows = []
            with open(base + ".txt") as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) > 2 and parts[0].isdigit() and int(parts[0]) > 0:
                        rows.append((int(parts[0]), parts[2].replace("syscalls:sys_enter_", "")
                                     .replace("probe_libc:", "")))
            rows.sort(reverse=True)
            with open(base + ".txt", "a") as f:
                for n, name in rows:
                    per = f"{n / units:.3f} per unit" if units else ""
                    line = f"{name:24} {n:10} {per}"
                    print(line)
                    f.write("# " + line + "\n")
        if args.tool == "perf":
            with open(base + ".txt", "w") as f:
                subprocess.run(["perf", "report", "-i", base + ".data", "--no-children", "--stdio",
                                "--sort", "comm,dso,sym", "-g", "none", "--percent-limit", "0.7"],
                               stdout=f, stderr=subprocess.DEVNULL)
        if args.tool != "none":
            print(f"profile: {base}.txt")
    finally:
        if tool is not None and tool.poll() is None:
            tool.kill()
        if args.tool == "allocs":
            for fn in ALLOC_FNS:
                subprocess.run(["perf", "probe", "-q", "-d", f"probe_libc:{fn}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lb.stop(topo, handle)
        topo.close()


if __name__ == "__main__":
    main()
