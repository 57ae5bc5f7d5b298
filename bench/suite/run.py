#!/usr/bin/env python3
"""sluice benchmark suite: sluice side by side with HAProxy, nginx stream, kube-proxy-style
nftables DNAT and no LB at all, in network namespaces it creates and removes itself.

Use bench/run.sh (installs packages, builds sluice, cleans up); this file is the runner.
See docs/benchmarks.md for what every column means.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lbs  # noqa: E402
from lbs import (DNS_NODEPORT, HTTP_NODEPORT, IPERF_NODEPORT, NODE_IP, PODS, POD_HTTP_PORT,  # noqa: E402
                 POD_IPERF_PORT, POD_UDP_PORT, SLUICE_UDP_VARIANTS, SLUICE_VARIANTS, SCALE_VARIANT)
from netns import (Topology, ksoftirqd_pids, machine_cpu, proc_cpu, proc_mem_kb,  # noqa: E402
                   run_bounded, sh)
import report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# Workloads: name -> (kind, parameters). Every one is bounded by --duration (and a hard
# kill a few seconds later).
WORKLOADS = {
    "keepalive": ("wrk", {"path": "/small", "conns": 64, "close": False}),
    "close": ("wrk", {"path": "/small", "conns": 64, "close": True}),
    "1mib": ("wrk", {"path": "/1m", "conns": 16, "close": False}),
    "iperf1": ("iperf", {"streams": 1}),
    "iperf4": ("iperf", {"streams": 4}),
    # UDP (LBs of protocol "udp", plus direct and nftables): udpgen.c, 64-byte queries,
    # 64 in flight (closed loop), 200 ms until a query counts as lost.
    "udp-dns": ("udp", {"mode": "rr", "slots": 64, "size": 64}),  # 64 client ports, a query each
    "udp-flows": ("udp", {"mode": "flows", "slots": 64, "size": 64}),  # a new source port per query
    "udp-bulk": ("iperf-udp", {"rate": "1G", "len": 1400}),  # iperf3 -u at a fixed rate
}
UDP_KINDS = ("udp", "iperf-udp")
UDPGEN = None  # the compiled bench/suite/udpgen.c (start_pods builds it)


class LB:
    """One load balancer configuration: how to start it in the node namespace."""

    def __init__(self, name, kind, start, stop=None, target=None, family=None, protocols=("tcp",),
                 udp_target=None):
        self.name, self.kind = name, kind
        self._start, self._stop = start, stop
        self.target = target or (NODE_IP, HTTP_NODEPORT, NODE_IP, IPERF_NODEPORT)
        # (DNS-like host, port, iperf3 -u host, port)
        self.udp_target = udp_target or (NODE_IP, DNS_NODEPORT, NODE_IP, IPERF_NODEPORT)
        self.family = family or kind
        self.protocols = protocols

    def serves(self, workload):
        return ("udp" if WORKLOADS[workload][0] in UDP_KINDS else "tcp") in self.protocols

    def start(self, topo, tmp):
        return self._start(topo, tmp)

    def stop(self, topo, handle):
        if self._stop:
            self._stop(topo, handle)
        elif handle is not None:
            topo.stop(handle)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def make_lbs(args):
    out = []
    direct = (PODS[0], POD_HTTP_PORT, PODS[0], POD_IPERF_PORT)
    out.append(LB("direct", "direct", lambda t, d: None, target=direct, protocols=("tcp", "udp"),
                  udp_target=(PODS[0], POD_UDP_PORT, PODS[0], POD_IPERF_PORT)))

    for name, settings, service, extra, *node in SLUICE_VARIANTS:
        setup, teardown = node[0] if node else ([], [])

        def start(t, d, name=name, settings=settings, service=service, extra=extra, setup=setup):
            for c in setup:
                t.exec(t.node, *c.split())
            cfg = write(f"{d}/{name}.toml", lbs.sluice_config(settings, service))
            return t.spawn(t.node, [args.sluice, "run", "--log-level", "warn", "--config", cfg, *extra],
                           f"{d}/{name}.log")

        def stop(t, h, teardown=teardown):
            if h is not None:
                t.stop(h)
            for c in teardown:
                t.exec(t.node, *c.split(), check=False)
        out.append(LB(name, "sluice", start, stop))

    for threads in (1, 2):
        def start(t, d, threads=threads):
            cfg = write(f"{d}/haproxy{threads}.cfg", lbs.haproxy_config(threads))
            return t.spawn(t.node, ["haproxy", "-db", "-f", cfg], f"{d}/haproxy{threads}.log")
        out.append(LB(f"haproxy-{threads}t", "haproxy", start))

    for workers in (1, 2):
        def start(t, d, workers=workers):
            sub = f"{d}/nginx-lb{workers}"
            os.makedirs(sub, exist_ok=True)
            cfg = write(f"{sub}/nginx.conf", lbs.nginx_stream_config(workers, sub))
            return t.spawn(t.node, ["nginx", "-p", sub, "-e", f"{sub}/error.log", "-c", cfg,
                                    "-g", "daemon off;"], f"{sub}/stdout.log")
        out.append(LB(f"nginx-{workers}w", "nginx", start))

    def nft_start(t, d, services=1):
        t.exec(t.node, "nft", "-f", "-", input=lbs.nft_ruleset(services), timeout=300)
        return "nft"

    def nft_stop(t, h):
        t.exec(t.node, "nft", "delete", "table", "ip", "kube-proxy", check=False)
        t.exec(t.node, "conntrack", "-F", check=False) if shutil.which("conntrack") else None

    out.append(LB("nftables", "nftables", nft_start, nft_stop, protocols=("tcp", "udp")))

    # UDP rows (--quick: only those marked for it, to stay within ~30 s).
    for name, settings, quick in SLUICE_UDP_VARIANTS:
        if getattr(args, "quick", False) and not quick:
            continue

        def start(t, d, name=name, settings=settings):
            cfg = write(f"{d}/{name}.toml", lbs.sluice_udp_config(settings))
            return t.spawn(t.node, [args.sluice, "run", "--log-level", "warn", "--config", cfg],
                           f"{d}/{name}.log")
        out.append(LB(name, "sluice", start, protocols=("udp",)))
    for workers in ((1,) if getattr(args, "quick", False) else (1, 2)):
        def start(t, d, workers=workers):
            sub = f"{d}/nginx-udp{workers}"
            os.makedirs(sub, exist_ok=True)
            cfg = write(f"{sub}/nginx.conf", lbs.nginx_udp_config(workers, sub))
            return t.spawn(t.node, ["nginx", "-p", sub, "-e", f"{sub}/error.log", "-c", cfg,
                                    "-g", "daemon off;"], f"{sub}/stdout.log")
        out.append(LB(f"nginx-udp-{workers}w", "nginx", start, protocols=("udp",)))

    if args.only:
        keep = set(args.only.split(","))
        out = [lb for lb in out if lb.name in keep or lb.name == "direct"]
    return out


def wait_ready(topo, lb, timeout=15.0):
    if "udp" in lb.protocols:
        host, port = lb.udp_target[0], lb.udp_target[1]
        deadline = time.time() + timeout
        while True:  # each probe waits up to 3 s for an answer
            r = subprocess.run(["ip", "netns", "exec", topo.client, UDPGEN, "probe", host, str(port)],
                               capture_output=True, timeout=10)
            if r.returncode == 0:
                break
            if time.time() > deadline:
                raise RuntimeError(f"{lb.name} did not answer UDP at {host}:{port} within {timeout}s")
            time.sleep(0.2)
        if "tcp" not in lb.protocols:
            return True
    host, port = lb.target[0], lb.target[1]
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        r = topo.exec(topo.client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2",
                      f"http://{host}:{port}/small", check=False)
        if r.strip() == "200":
            return True
        last = r
        time.sleep(0.2)
    raise RuntimeError(f"{lb.name} did not serve {host}:{port} within {timeout}s (last: {last!r})")


WRK_LUA = os.path.join(HERE, "report.lua")


def run_wrk(topo, host, port, p, duration):
    args = ["wrk", "-t", "2", "-c", str(p["conns"]), "-d", f"{max(1, int(round(duration)))}s", "--timeout", "3s",
            "-s", WRK_LUA]
    if p["close"]:
        args += ["-H", "Connection: close"]
    args.append(f"http://{host}:{port}{p['path']}")
    rc, out, cpu = run_bounded(topo.client, args, duration + 15)
    m = re.search(r"^JSON (\{.*\})$", out, re.M)
    if rc != 0 or not m:
        return {"failed": f"wrk rc={rc}: {out[-500:]}", "gen_cpu": cpu}
    j = json.loads(m.group(1))
    secs = j["duration_us"] / 1e6
    errs = j["connect"] + j["read"] + j["write"] + j["status"] + j["timeout"]
    return {"secs": secs, "requests": j["requests"], "bytes": j["bytes"], "errors": errs,
            "error_detail": {k: j[k] for k in ("connect", "read", "write", "status", "timeout")},
            "p50_us": j["p50"], "p99_us": j["p99"], "p999_us": j["p999"], "max_us": j["max"],
            "gen_cpu": cpu}


def run_iperf(topo, host, port, p, duration):
    args = ["iperf3", "-c", host, "-p", str(port), "-t", str(max(1, int(duration))),
            "-P", str(p["streams"]), "-J", "--connect-timeout", "3000"]
    rc, out, cpu = run_bounded(topo.client, args, duration + 20)
    try:
        j = json.loads(out[out.index("{"):])
    except ValueError:
        return {"failed": f"iperf3 rc={rc}: {out[-500:]}", "gen_cpu": cpu}
    if rc != 0 or "error" in j:
        return {"failed": f"iperf3 rc={rc}: {j.get('error', '')}", "gen_cpu": cpu}
    rcv = j["end"]["sum_received"]
    return {"secs": rcv["seconds"], "bytes": rcv["bytes"], "requests": 0, "errors": 0,
            "retransmits": j["end"]["sum_sent"].get("retransmits", 0), "gen_cpu": cpu}


def run_udpgen(topo, host, port, p, duration):
    args = [UDPGEN, p["mode"], host, str(port), str(duration), str(p["slots"]), str(p["size"])]
    rc, out, cpu = run_bounded(topo.client, args, duration + 10)
    m = re.search(r"^JSON (\{.*\})$", out, re.M)
    if rc != 0 or not m:
        return {"failed": f"udpgen rc={rc}: {out[-500:]}", "gen_cpu": cpu}
    j = json.loads(m.group(1))
    unanswered = j["lost"] + j["send_failed"] + j["open_failed"]
    return {"secs": j["secs"], "requests": j["answered"], "bytes": j["answered"] * p["size"],
            "errors": 0, "lost": unanswered, "error_detail": {k: j[k] for k in ("lost", "send_failed", "open_failed")},
            "loss_pct": 100.0 * unanswered / max(1, j["answered"] + unanswered),
            "p50_us": j["p50_us"], "p99_us": j["p99_us"], "p999_us": j["p999_us"], "gen_cpu": cpu}


def run_iperf_udp(topo, host, port, p, duration):
    args = ["iperf3", "-c", host, "-p", str(port), "-u", "-b", p["rate"], "-l", str(p["len"]),
            "-t", str(max(1, int(duration))), "-J", "--connect-timeout", "3000"]
    rc, out, cpu = run_bounded(topo.client, args, duration + 20)
    try:
        j = json.loads(out[out.index("{"):])
    except ValueError:
        return {"failed": f"iperf3 -u rc={rc}: {out[-500:]}", "gen_cpu": cpu}
    if rc != 0 or "error" in j:
        return {"failed": f"iperf3 -u rc={rc}: {j.get('error', '')}", "gen_cpu": cpu}
    rcv = j["end"]["sum_received"]
    got = rcv["packets"] - rcv["lost_packets"]
    # requests = datagrams received by the pod
    return {"secs": rcv["seconds"], "bytes": rcv["bytes"], "requests": got, "errors": 0,
            "sent_datagrams": rcv["packets"], "loss_pct": rcv["lost_percent"], "gen_cpu": cpu}


RUNNERS = {"wrk": run_wrk, "iperf": run_iperf, "udp": run_udpgen, "iperf-udp": run_iperf_udp}


def measure(topo, lb, workload, duration, lb_pids, bench_pids):
    kind, p = WORKLOADS[workload]
    if kind in UDP_KINDS:
        host, port = (lb.udp_target[0], lb.udp_target[1]) if kind == "udp" else (lb.udp_target[2], lb.udp_target[3])
    else:
        host, port = (lb.target[0], lb.target[1]) if kind == "wrk" else (lb.target[2], lb.target[3])
    udp = kind in UDP_KINDS
    snmp0 = {ns: udp_rcvbuf_errors(topo, ns) for ns in (topo.node, topo.pod)} if udp else {}
    soft = ksoftirqd_pids()
    lb0 = sum(proc_cpu(x) for x in lb_pids)
    srv0 = sum(proc_cpu(x) for x in bench_pids + soft)
    m0 = machine_cpu()
    t0 = time.time()
    res = RUNNERS[kind](topo, host, port, p, duration)
    res["wall"] = time.time() - t0
    m1 = machine_cpu()
    res["lb_cpu"] = sum(proc_cpu(x) for x in lb_pids) - lb0
    # "suite CPU": every process of the benchmark (LB, pods, load generator) + ksoftirqd.
    # Other engineers' compilers on the same machine are not in it (unlike /proc/stat).
    res["suite_cpu"] = sum(proc_cpu(x) for x in bench_pids + soft) - srv0 + res["lb_cpu"] + res["gen_cpu"]
    res["machine_cpu"] = m1[0] - m0[0]
    if lb.kind == "sluice" and lb_pids:
        res["rss_kb"], res["hwm_kb"] = proc_mem_kb(lb_pids[0])
    if udp:
        # Where datagrams were dropped: receive buffers full in the node namespace (the LB's
        # sockets; forwarding for direct and nftables has none) and in the pods.
        res["node_rcvbuf_drops"] = udp_rcvbuf_errors(topo, topo.node) - snmp0[topo.node]
        res["pod_rcvbuf_drops"] = udp_rcvbuf_errors(topo, topo.pod) - snmp0[topo.pod]
    return res


def udp_rcvbuf_errors(topo, ns):
    """The namespace's UDP RcvbufErrors counter (/proc/net/snmp)."""
    lines = [x.split() for x in topo.exec(ns, "cat", "/proc/net/snmp").splitlines() if x.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def meta(args):
    def v(cmd):
        try:
            return sh(*cmd, check=False).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f"? ({e})"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import subprocess
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host_cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": " ".join(load),
        "sluice": v([args.sluice, "--version"]) + f" (git {v(['git', '-C', HERE, 'rev-parse', '--short', 'HEAD'])})",
        "haproxy": v(["haproxy", "-v"]), "nginx": nginx, "wrk": v(["wrk", "-v"]) or "wrk",
        "iperf3": v(["iperf3", "-v"]), "nft": v(["nft", "--version"]),
        "cc": v(["cc", "--version"]),
        "mode": "quick" if args.quick else "full", "reps": args.reps, "duration_s": args.duration,
        "hostname": socket.gethostname(),
    }


def build_udpgen(tmp):
    global UDPGEN
    UDPGEN = f"{tmp}/udpgen"
    sh("cc", "-O2", "-pthread", "-o", UDPGEN, os.path.join(HERE, "udpgen.c"), timeout=120)


def start_pods(topo, tmp):
    pod = f"{tmp}/pod"
    os.makedirs(f"{pod}/www", exist_ok=True)
    build_udpgen(tmp)
    # ~100-byte body and 1 MiB body.
    write(f"{pod}/www/small", ("sluice-bench " * 8)[:99] + "\n")
    with open(f"{pod}/www/1m", "wb") as f:
        f.write(os.urandom(1 << 20))
    cfg = write(f"{pod}/nginx.conf", lbs.pod_nginx_config(pod))
    topo.spawn(topo.pod, ["nginx", "-p", pod, "-e", f"{pod}/error.log", "-c", cfg, "-g", "daemon off;"],
               f"{pod}/stdout.log")
    for ip in PODS:
        topo.spawn(topo.pod, ["iperf3", "-s", "-B", ip, "-p", str(POD_IPERF_PORT), "--idle-timeout", "30"],
                   f"{pod}/iperf-{ip}.log")
        for i in range(2):  # two SO_REUSEPORT echo servers per pod: `direct` uses one pod
            topo.spawn(topo.pod, [UDPGEN, "server", ip, str(POD_UDP_PORT)], f"{pod}/udp-{ip}-{i}.log")
    time.sleep(0.5)
    for ip in PODS:
        r = topo.exec(topo.client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3",
                      f"http://{ip}:{POD_HTTP_PORT}/small", check=False)
        if r.strip() != "200":
            raise RuntimeError(f"pod {ip} does not serve (curl said {r!r}); see {pod}/error.log")
        if subprocess.run(["ip", "netns", "exec", topo.client, UDPGEN, "probe", ip, str(POD_UDP_PORT)],
                          capture_output=True, timeout=10).returncode != 0:
            raise RuntimeError(f"pod {ip} does not echo UDP on {POD_UDP_PORT}; see {pod}/udp-{ip}-*.log")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 repetition, 1 s per run, no warm-up, scale 1 and 10000, fewer UDP rows")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick: 1)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per run (default 6; quick: 1)")
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--out", default=None, help="results folder (default bench/results/DATE-TIME)")
    ap.add_argument("--only", default=None, help="comma-separated LB names (direct always runs)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--scale", default=None, help="Service counts for the scale run (default 1,1000,10000; 'none' to skip)")
    args = ap.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (1 if args.quick else 6)
    default_scale = "1,10000" if args.quick else "1,1000,10000"
    scale_counts = [] if args.scale == "none" else [int(x) for x in (args.scale or default_scale).split(",")]
    args.sluice = os.path.abspath(args.sluice)
    workloads = args.workloads.split(",")
    out = args.out or os.path.join(HERE, "..", "results",
                                   datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    out = os.path.abspath(out)
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    os.chmod(tmp, 0o755)
    print(f"results -> {out}   logs -> {tmp}", flush=True)

    topo = Topology(os.getpid())

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    runs, failures = [], []
    info = meta(args)
    t_start = time.time()
    try:
        topo.up()
        start_pods(topo, tmp)
        pod_pids = topo.pids(topo.pod)
        all_lbs = make_lbs(args)
        for rep in range(args.reps):
            for lb in all_lbs:  # interleaved: A B C ... A B C ...
                if not any(lb.serves(w) for w in workloads):
                    continue
                handle = None
                try:
                    handle = lb.start(topo, tmp)
                    wait_ready(topo, lb)
                    lb_pids = topo.pids(topo.node)
                    if lb.kind in ("sluice", "haproxy", "nginx") and not lb_pids:
                        raise RuntimeError(f"{lb.name}: no process in the node namespace")
                    mine = [w for w in workloads if lb.serves(w)]
                    # warm-up (not measured): connections, caches, page cache of the files
                    if not args.quick and any(WORKLOADS[w][0] not in UDP_KINDS for w in mine):
                        run_wrk(topo, lb.target[0], lb.target[1], WORKLOADS["keepalive"][1], 1)
                    if not args.quick and any(WORKLOADS[w][0] in UDP_KINDS for w in mine):
                        run_udpgen(topo, lb.udp_target[0], lb.udp_target[1], WORKLOADS["udp-dns"][1], 1)
                    for w in mine:
                        res = measure(topo, lb, w, args.duration, lb_pids, pod_pids)
                        res.update({"lb": lb.name, "kind": lb.kind, "workload": w, "rep": rep, "services": 1})
                        runs.append(res)
                        print(report.one_line(res), flush=True)
                        if "failed" in res:
                            failures.append(f"{lb.name}/{w}: {res['failed']}")
                        time.sleep(0.3)
                    if lb.kind == "sluice" and handle is not None and handle.poll() is not None:
                        failures.append(f"{lb.name}: exited with {handle.returncode} during the run")
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{lb.name} rep {rep}: {e}")
                    print(f"!! {lb.name} rep {rep}: {e}", flush=True)
                finally:
                    lb.stop(topo, handle)  # also undoes a variant's node setup
                    time.sleep(0.3)
            # Scale run: same keep-alive workload, 1 / 1000 / 10000 Services configured.
            for count in scale_counts:
                for name, settings, service, extra, *_ in SLUICE_VARIANTS:
                    if name != SCALE_VARIANT:
                        continue
                    lb = LB(f"{name}-1w", "sluice", None)
                    handle = None
                    try:
                        # One worker: each Service is one listening socket per worker and
                        # RLIMIT_NOFILE is 20000 here (2 workers x 10000 would not fit).
                        cfg = write(f"{tmp}/scale-{count}.toml",
                                    lbs.sluice_config(settings, service, services=count, workers=1, maglev=1009))
                        t0 = time.time()
                        handle = topo.spawn(topo.node, [args.sluice, "run", "--log-level", "warn", "--config", cfg, *extra],
                                            f"{tmp}/scale-{count}.log")
                        wait_ready(topo, lb, timeout=120)
                        startup = time.time() - t0
                        lb_pids = topo.pids(topo.node)
                        if not args.quick:
                            run_wrk(topo, NODE_IP, HTTP_NODEPORT, WORKLOADS["keepalive"][1], 1)
                        res = measure(topo, lb, "keepalive", args.duration, lb_pids, pod_pids)
                        res.update({"lb": lb.name, "kind": "sluice", "workload": "scale-keepalive",
                                    "rep": rep, "services": count, "startup_s": startup})
                        runs.append(res)
                        print(report.one_line(res), flush=True)
                        if "failed" in res:
                            failures.append(f"scale {count}: {res['failed']}")
                    except Exception as e:  # noqa: BLE001
                        failures.append(f"scale {count} rep {rep}: {e}")
                        print(f"!! scale {count} rep {rep}: {e}", flush=True)
                    finally:
                        if handle is not None:
                            topo.stop(handle)
                        time.sleep(0.3)
                # kube-proxy nftables with the same number of Services (a verdict map: flat too)
                if any(lb.name == "nftables" for lb in all_lbs):
                    lb = next(lb for lb in all_lbs if lb.name == "nftables")
                    try:
                        topo.exec(topo.node, "nft", "-f", "-", input=lbs.nft_ruleset(count), timeout=600)
                        wait_ready(topo, lb)
                        res = measure(topo, lb, "keepalive", args.duration, [], pod_pids)
                        res.update({"lb": "nftables", "kind": "nftables", "workload": "scale-keepalive",
                                    "rep": rep, "services": count})
                        runs.append(res)
                        print(report.one_line(res), flush=True)
                    except Exception as e:  # noqa: BLE001
                        failures.append(f"nft scale {count} rep {rep}: {e}")
                    finally:
                        lb.stop(topo, "nft")
    except KeyboardInterrupt as e:
        failures.append(f"interrupted: {e}")
        print(f"interrupted ({e}); cleaning up", flush=True)
    finally:
        topo.close()
    info["elapsed_s"] = round(time.time() - t_start)
    with open(f"{out}/runs.json", "w") as f:
        json.dump({"meta": info, "runs": runs, "failures": failures}, f, indent=1)
    report.write_all(out, info, runs, failures, workloads)
    failures += report.sanity(runs)
    print(f"\nwrote {out}/summary.md and charts; {len(runs)} runs in {info['elapsed_s']} s; logs in {tmp}")
    if failures:
        print("FAILURES:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
