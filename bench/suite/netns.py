"""Test topology in network namespaces, processes started in them, CPU accounting.

    client ns  c0 198.18.0.1/24 ---- n0 198.18.0.2/24  node ns  n1 198.18.1.1/24 ---- p0  pod ns
    (wrk, iperf3 -c)                 (the LB under test, or nftables DNAT)       198.18.1.11-13/24
                                                                                (nginx, iperf3 -s)

Only 198.18.0.0/15 addresses, nothing connected to the root namespace. The node forwards
(for `direct` and nftables); pods and client route only via the node.

Everything started here is tracked and removed by `Topology.close()`; namespaces carry the
runner's PID in their name, so a second safety net (bench/run.sh's EXIT trap) can remove
them and the processes inside them even if this Python process is killed.
"""

import os
import signal
import subprocess
import time

from lbs import CLIENT_IP, NODE_IP, NODE_POD_IP, PODS

CLK_TCK = os.sysconf("SC_CLK_TCK")


def sh(*args, check=True, input=None, timeout=60):
    r = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def proc_cpu(pid):
    """utime + stime (seconds) of a process, all its threads, including exited ones."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def proc_mem_kb(pid):
    """(VmRSS, VmHWM) in KiB."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except FileNotFoundError:
        pass
    return rss, hwm


def machine_cpu():
    """(busy, total) CPU seconds of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def ksoftirqd_pids():
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        pids.append(int(p))
            except OSError:
                pass
    return pids


class Topology:
    def __init__(self, tag):
        self.client = f"sb{tag}-client"
        self.node = f"sb{tag}-node"
        self.pod = f"sb{tag}-pod"
        self.procs = []  # Popen objects we started (each in its own process group)
        self.created = []

    # ---- namespaces -------------------------------------------------------------------
    def up(self):
        for ns in (self.client, self.node, self.pod):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
        c, n, p = self.client, self.node, self.pod
        sh("ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "n0", "netns", n)
        sh("ip", "link", "add", "n1", "netns", n, "type", "veth", "peer", "p0", "netns", p)
        self.ip(c, "addr add 198.18.0.1/24 dev c0")
        self.ip(n, "addr add 198.18.0.2/24 dev n0")
        self.ip(n, "addr add 198.18.1.1/24 dev n1")
        for ip in PODS:
            self.ip(p, f"addr add {ip}/24 dev p0")
        for ns, devs in ((c, ["lo", "c0"]), (n, ["lo", "n0", "n1"]), (p, ["lo", "p0"])):
            for d in devs:
                self.ip(ns, f"link set {d} up")
        self.ip(c, f"route add 198.18.1.0/24 via {NODE_IP}")
        self.ip(p, f"route add 198.18.0.0/24 via {NODE_POD_IP}")
        for ns in (c, n, p):
            for k, v in (("net.ipv4.ip_local_port_range", "10000 65000"),
                         ("net.ipv4.tcp_tw_reuse", "1"),
                         ("net.core.somaxconn", "8192"),
                         ("net.ipv4.tcp_max_syn_backlog", "8192")):
                self.exec(ns, "sysctl", "-qw", f"{k}={v}")
        # The node routes for `direct` and nftables; proxies do not need it.
        self.exec(n, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def ip(self, ns, cmd):
        sh("ip", "-n", ns, *cmd.split())

    def exec(self, ns, *args, check=True, input=None, timeout=60):
        return sh("ip", "netns", "exec", ns, *args, check=check, input=input, timeout=timeout)

    def pids(self, ns):
        out = sh("ip", "netns", "pids", ns, check=False)
        return [int(x) for x in out.split()]

    # ---- processes --------------------------------------------------------------------
    def spawn(self, ns, args, log):
        """Start a long-running process in `ns`, in a new process group, output to `log`."""
        f = open(log, "ab")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        f.close()
        self.procs.append(p)
        return p

    def stop(self, p, grace=5.0):
        """SIGTERM the process group we created for `p`, then SIGKILL after `grace`."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        # Children that outlived their parent in the same group (nginx workers).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p in self.procs:
            self.procs.remove(p)

    def close(self):
        for p in list(self.procs):
            try:
                self.stop(p, grace=2.0)
            except Exception:
                pass
        # Anything still inside our namespaces is ours: kill by PID, then delete.
        for ns in self.created:
            for pid in self.pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
        for ns in self.created:
            sh("ip", "netns", "del", ns, check=False)
        self.created = []


def run_bounded(ns, args, timeout):
    """Run a load generator in `ns` with a hard time bound. Returns (rc, stdout, cpu_seconds)
    where cpu_seconds is the child's own user+system time (from wait4)."""
    import tempfile
    with tempfile.TemporaryFile() as out_f:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out_f,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = time.time() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                os.killpg(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        out = out_f.read().decode(errors="replace")
    return p.returncode, out, ru.ru_utime + ru.ru_stime
