"""Turns the raw runs into summary.md (tables), goals, and SVG charts (no dependencies)."""

import html
import math
import statistics

PEER_KINDS = ("haproxy", "nginx", "nftables")
KIND_COLOR = {"sluice": "#d6452f", "haproxy": "#2f6fd6", "nginx": "#2f9a4a",
              "nftables": "#8a4fc2", "direct": "#888888"}

# workload -> (throughput unit, throughput fn, efficiency unit, efficiency fn(run, lb_cpu))
def _rate(r):
    return r["requests"] / r["secs"]


def _gbit(r):
    return r["bytes"] * 8 / r["secs"] / 1e9


UNITS = {
    "keepalive": ("req/s", _rate, "req per LB-CPU-s", lambda r, c: r["requests"] / c, "requests"),
    "close": ("conn/s", _rate, "new conn per LB-CPU-s", lambda r, c: r["requests"] / c, "requests"),
    "1mib": ("Gbit/s", _gbit, "GB per LB-CPU-s", lambda r, c: r["bytes"] / 1e9 / c, "bytes"),
    "iperf1": ("Gbit/s", _gbit, "GB per LB-CPU-s", lambda r, c: r["bytes"] / 1e9 / c, "bytes"),
    "iperf4": ("Gbit/s", _gbit, "GB per LB-CPU-s", lambda r, c: r["bytes"] / 1e9 / c, "bytes"),
    "scale-keepalive": ("req/s", _rate, "req per LB-CPU-s", lambda r, c: r["requests"] / c, "requests"),
    # UDP: "requests" are answered queries, completed flows, datagrams received by the pod
    "udp-dns": ("req/s", _rate, "req per LB-CPU-s", lambda r, c: r["requests"] / c, "requests"),
    "udp-flows": ("flows/s", _rate, "flows per LB-CPU-s", lambda r, c: r["requests"] / c, "requests"),
    "udp-bulk": ("datagrams/s", _rate, "datagrams per LB-CPU-s", lambda r, c: r["requests"] / c, "requests"),
}
# What one "request" of a TCP workload is, for the added-CPU column.
PER = {"keepalive": "request", "close": "connection", "1mib": "1 MiB download",
       "scale-keepalive": "request", "iperf1": "request", "iperf4": "request"}
UDP_WORKLOADS = ("udp-dns", "udp-flows", "udp-bulk")
LATENCY_WORKLOADS = ("keepalive", "close", "1mib", "udp-dns", "udp-flows")


def one_line(r):
    if "failed" in r:
        return f"{r['lb']:28} {r['workload']:16} rep {r['rep']}  FAILED {r['failed'][:200]}"
    unit, tp, _, _, _ = UNITS[r["workload"]]
    extra = f"  p99 {r['p99_us'] / 1000:.2f} ms" if "p99_us" in r else ""
    extra += f"  loss {r['loss_pct']:.2f}%" if "loss_pct" in r else ""
    svc = f" ({r['services']} svc)" if r["workload"].startswith("scale") else ""
    return (f"{r['lb']:28} {r['workload']:16}{svc} rep {r['rep']}  {tp(r):10.2f} {unit:7}"
            f"  LB cpu {r['lb_cpu']:6.2f} s  suite cpu {r['suite_cpu']:6.2f} s"
            f"  errors {r.get('errors', 0)}{extra}")


def lb_cpu_of(r, runs):
    """LB CPU seconds of a run. For nftables (no process) it is derived: the suite's CPU per
    unit of work minus the same in the `direct` run of the same repetition, times the units."""
    if r["kind"] in ("sluice", "haproxy", "nginx"):
        return r["lb_cpu"] if r["lb_cpu"] > 0 else None
    if r["kind"] != "nftables":
        return None
    field = UNITS[r["workload"]][4]
    wl = "keepalive" if r["workload"] == "scale-keepalive" else r["workload"]
    d = [x for x in runs if x["lb"] == "direct" and x["workload"] == wl and x["rep"] == r["rep"]
         and "failed" not in x and x[field] > 0]
    if not d or r[field] <= 0:
        return None
    per_unit = r["suite_cpu"] / r[field] - d[0]["suite_cpu"] / d[0][field]
    return per_unit * r[field] if per_unit > 0 else None


def added_over_direct(r, runs, field="suite_cpu"):
    """Suite CPU (every process of the benchmark + ksoftirqd) per unit of work, minus the same
    in the `direct` run of the same repetition: µs of whole-benchmark CPU the LB adds per
    request, flow or datagram (None for `direct` itself). field="machine_cpu": the same from
    /proc/stat (the whole machine, other users' work included: only on a quiet machine)."""
    if r["kind"] == "direct" or r["requests"] <= 0:
        return None
    d = [x for x in runs if x["lb"] == "direct" and x["workload"] == r["workload"] and x["rep"] == r["rep"]
         and "failed" not in x and x["requests"] > 0]
    if not d:
        return None
    return 1e6 * (r[field] / r["requests"] - d[0][field] / d[0]["requests"])


def med(xs):
    xs = [x for x in xs if x is not None]
    return (statistics.median(xs), min(xs), max(xs)) if xs else None


def aggregate(runs, workload, services=None):
    """{lb: stats} for one workload, in order of first appearance."""
    out = {}
    for r in runs:
        if r["workload"] != workload or (services is not None and r["services"] != services):
            continue
        a = out.setdefault(r["lb"], {"kind": r["kind"], "runs": [], "failed": 0})
        if "failed" in r:
            a["failed"] += 1
        else:
            a["runs"].append(r)
    unit, tp, eunit, eff, _ = UNITS[workload]
    for lb, a in out.items():
        rs = a["runs"]
        a["n"] = len(rs)
        a["tp"] = med([tp(r) for r in rs])
        cpus = [lb_cpu_of(r, runs) for r in rs]
        a["cpu"] = med(cpus)
        a["eff"] = med([eff(r, c) if c else None for r, c in zip(rs, cpus)])
        for p in ("p50_us", "p99_us", "p999_us"):
            a[p] = med([r.get(p) for r in rs])
        a["errors"] = sum(r.get("errors", 0) for r in rs)
        a["loss"] = med([r.get("loss_pct") for r in rs])
        a["added_us"] = med([added_over_direct(r, runs) for r in rs])
        a["added_machine_us"] = med([added_over_direct(r, runs, "machine_cpu") for r in rs])
        a["node_drops"] = med([r.get("node_rcvbuf_drops") for r in rs])
        a["pod_drops"] = med([r.get("pod_rcvbuf_drops") for r in rs])
        a["retransmits"] = med([r.get("retransmits") for r in rs])
        a["hwm_mb"] = med([r["hwm_kb"] / 1024 for r in rs if r.get("hwm_kb")])
        a["startup_s"] = med([r.get("startup_s") for r in rs])
    return out


def fmt(m, digits=2, scale=1.0):
    if not m:
        return "—"
    v, lo, hi = (x * scale for x in m)
    f = f"{{:.{digits}f}}"
    if lo == hi:
        return f.format(v)
    return f"{f.format(v)} ({f.format(lo)}–{f.format(hi)})"


def sig(x):
    """A value with ~3 significant digits."""
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_sig(m):
    if not m:
        return "—"
    v, lo, hi = m
    return sig(v) if lo == hi else f"{sig(v)} ({sig(lo)}–{sig(hi)})"


def workload_table(runs, workload):
    agg = aggregate(runs, workload, services=1)
    unit, _, eunit, _, _ = UNITS[workload]
    lat = workload in ("keepalive", "close", "1mib")
    head = f"| LB | throughput, {unit} | "
    head += "p50 / p99 / p99.9 latency, ms | errors | " if lat else "retransmits | "
    head += f"LB CPU s | **{eunit}** | CPU added over direct, µs per {PER.get(workload, 'request')}: suite / whole machine | sluice peak RSS MiB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for lb, a in agg.items():
        if a["n"] == 0:
            lines.append(f"| {lb} | FAILED ({a['failed']} runs) |")
            continue
        row = f"| {lb} | {fmt_sig(a['tp'])} | "
        if lat:
            row += " / ".join(fmt(a[p], 2, 1e-3) if a[p] else "—" for p in ("p50_us", "p99_us", "p999_us")).replace(" (", "&nbsp;(") + f" | {a['errors']} | "
        else:
            row += f"{fmt(a['retransmits'], 0)} | "
        cpu = fmt(a["cpu"], 2) + (" (derived)" if a["kind"] == "nftables" and a["cpu"] else "")
        added = f"{fmt(a['added_us'], 2)} / {fmt(a['added_machine_us'], 2)}"
        row += f"{cpu if a['kind'] != 'direct' else '—'} | **{fmt_sig(a['eff'])}** | "
        row += f"{added if a['kind'] != 'direct' else '—'} | {fmt(a['hwm_mb'], 1)} |"
        if a["failed"]:
            row += f" ({a['failed']} failed)"
        lines.append(row)
    return "\n".join(lines)


def udp_table(runs, workload):
    agg = aggregate(runs, workload, services=1)
    unit, _, eunit, _, _ = UNITS[workload]
    lat = workload != "udp-bulk"
    head = f"| LB | throughput, {unit} | loss % | drops: LB / pod rcvbuf | "
    head += "p50 / p99 / p99.9 round trip, ms | " if lat else "Gbit/s received | "
    head += f"LB CPU s | **{eunit}** | "
    head += "LB CPU-s per GB | " if not lat else ""
    head += ("CPU added over direct, µs per " + {"udp-dns": "request", "udp-flows": "flow", "udp-bulk": "datagram"}[workload]
             + ": suite / whole machine | sluice peak RSS MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for lb, a in agg.items():
        if a["n"] == 0:
            lines.append(f"| {lb} | FAILED ({a['failed']} runs) |")
            continue
        row = f"| {lb} | {fmt_sig(a['tp'])} | {fmt(a['loss'], 2)} | {fmt(a['node_drops'], 0)} / {fmt(a['pod_drops'], 0)} | "
        if lat:
            row += " / ".join(fmt(a[p], 2, 1e-3) if a[p] else "—" for p in ("p50_us", "p99_us", "p999_us")).replace(" (", "&nbsp;(") + " | "
        else:
            row += fmt(med([r["bytes"] * 8 / r["secs"] / 1e9 for r in a["runs"]]), 2) + " | "
        cpu = fmt(a["cpu"], 2) + (" (derived)" if a["kind"] == "nftables" and a["cpu"] else "")
        row += f"{cpu if a['kind'] != 'direct' else '—'} | **{fmt_sig(a['eff'])}** | "
        if not lat:
            per_gb = med([c * 1e9 / r["bytes"] if c and r["bytes"] else None
                          for r, c in ((r, lb_cpu_of(r, runs)) for r in a["runs"])])
            row += f"{fmt(per_gb, 2) if a['kind'] != 'direct' else '—'} | "
        added = f"{fmt(a['added_us'], 2)} / {fmt(a['added_machine_us'], 2)}"
        row += f"{added if a['kind'] != 'direct' else '—'} | {fmt(a['hwm_mb'], 1)} |"
        if a["failed"]:
            row += f" ({a['failed']} failed)"
        lines.append(row)
    return "\n".join(lines)


def goals(runs, workloads):
    """One row per goal: the default sluice variant and the best sluice variant against the
    best proxy peer (HAProxy, nginx) and the best peer of all (with nftables)."""
    aggs = {w: aggregate(runs, w, services=1) for w in workloads}
    # Issue 18's goals (TCP) and issue 14's (UDP). "added_machine_us" is lower-better: the
    # ratio shown is best proxy ÷ sluice, so the goal "≤ 0.67× the proxy's" is ratio ≥ 1/0.67.
    spec = [("keepalive", "eff", 1.5, "req per LB-CPU-s ≥ 1.5× (keepalive)"),
            ("keepalive", "added_machine_us", 1 / 0.67,
             "whole-machine CPU added per request ≤ 0.67× (keepalive; ratio shown: proxy ÷ sluice, goal ≥ 1.49)"),
            ("close", "eff", 1.3, "new conn per LB-CPU-s ≥ 1.3× (close)"),
            ("close", "added_machine_us", 1 / 0.77,
             "whole-machine CPU added per connection ≤ 0.77× (close; ratio shown: proxy ÷ sluice, goal ≥ 1.30)"),
            ("1mib", "eff", 1.2, "GB per LB-CPU-s ≥ 1.2× (1mib)"),
            ("iperf1", "eff", 1.2, "GB per LB-CPU-s ≥ 1.2× (iperf1)"),
            ("iperf4", "eff", 1.2, "GB per LB-CPU-s ≥ 1.2× (iperf4)")]
    spec += [("udp-dns", "eff", 2.0, "UDP req per LB-CPU-s ≥ 2× (udp-dns)"),
             ("udp-flows", "tp", 2.0, "UDP new flows/s ≥ 2× (udp-flows)"),
             ("udp-bulk", "eff", 1.5, "UDP datagrams per LB-CPU-s ≥ 1.5× (udp-bulk, fixed rate)")]
    spec += [(w, "tp", 1.0, f"throughput ≥ 1× ({w})") for w in workloads if w != "udp-bulk"]
    spec += [(w, "p99_us", 1.0, f"p99 ≤ 1× ({w})") for w in ("keepalive", "close", "1mib", "udp-dns")]
    rows = []
    for w, key, target, text in spec:
        if w not in aggs:
            continue
        lower = key in ("p99_us", "added_machine_us")
        agg = aggs[w]

        def best(kinds):
            c = [(lb, a[key][0]) for lb, a in agg.items() if a["kind"] in kinds and a.get(key)]
            return (min if lower else max)(c, key=lambda x: x[1]) if c else (None, None)

        def ratio(v, pv):
            if v is None or pv is None:
                return None
            if key == "added_machine_us" and (v <= 0 or pv <= 0):
                return None  # within the noise of `direct`'s own run: no meaningful ratio
            return pv / v if lower else v / pv
        sl = [(lb, a[key][0]) for lb, a in agg.items() if a["kind"] == "sluice" and a.get(key)]
        if not sl:
            continue
        default = sl[0]
        best_sl = (min if lower else max)(sl, key=lambda x: x[1])
        proxy = best(("haproxy", "nginx"))
        anyp = best(PEER_KINDS)
        rows.append({"goal": text, "target": target, "default": default, "best_sluice": best_sl,
                     "proxy": proxy, "any": anyp,
                     "r_proxy": ratio(default[1], proxy[1]), "r_any": ratio(default[1], anyp[1]),
                     "r_best_proxy": ratio(best_sl[1], proxy[1])})
    return rows


def scale_rows(runs):
    out = []
    counts = sorted({r["services"] for r in runs if r["workload"] == "scale-keepalive"})
    by = {}
    for c in counts:
        for lb, a in aggregate(runs, "scale-keepalive", services=c).items():
            by.setdefault(lb, {})[c] = a
    return counts, by


def write_markdown(out, info, runs, failures, workloads):
    L = ["# sluice benchmark results", ""]
    L.append(f"{info['date']} · {info['mode']} mode · {info['reps']} repetitions × {info['duration_s']} s per run, "
             f"interleaved · medians (min–max) · {info['elapsed_s']} s in total")
    L.append("")
    L.append(f"Machine: {info['host_cpus']} CPUs ({info['cpu']}), {info['mem_gb']} GiB, kernel {info['kernel']}, "
             f"load average at start {info['loadavg_at_start']}.  ")
    L.append(f"Versions: {info['sluice']}; {info['haproxy']}; {info['nginx']}; {info['iperf3']}; {info['nft']}; wrk {info['wrk']}.")
    L.append("")
    titles = {"keepalive": "HTTP keep-alive, ~100-byte responses (wrk, 64 connections)",
              "close": "HTTP `Connection: close`: one new TCP connection per request (wrk, 64 connections)",
              "1mib": "1 MiB downloads (wrk, 16 keep-alive connections)",
              "iperf1": "iperf3 bulk, 1 stream (client → pod)",
              "iperf4": "iperf3 bulk, 4 streams (client → pod)",
              "udp-dns": "UDP request/response, DNS-like: 64-byte queries from 64 client ports, one in flight each, "
                         "one flow per query (`udp_responses = 1`, `proxy_responses 1`)",
              "udp-flows": "UDP new flows: every 64-byte query from a new source port, 64 in flight",
              "udp-bulk": "UDP bulk: `iperf3 -u -b 1G -l 1400` (fixed rate, client → pod)"}
    for w in workloads:
        table = udp_table(runs, w) if w in UDP_WORKLOADS else workload_table(runs, w)
        L += [f"## {titles.get(w, w)}", "", table, ""]
    counts, by = scale_rows(runs)
    if counts:
        L += ["## Scale: keep-alive with 1, 1,000 and 10,000 Services configured", "",
              "sluice with **one** worker here (each Service is one listening socket per worker; "
              "RLIMIT_NOFILE is 20000 on the dev machine), `maglev_table_size = 1009` for every count; "
              "load on one Service (NodePort 30000), the others configured and listening. "
              "nftables: kube-proxy's verdict-map layout with as many Services.", "",
              "| LB | Services | req/s | p99 ms | req per LB-CPU-s | peak RSS MiB | startup s |", "|---|---|---|---|---|---|---|"]
        for lb, per in by.items():
            for c in counts:
                a = per.get(c)
                if not a or a["n"] == 0:
                    continue
                L.append(f"| {lb} | {c:,} | {fmt_sig(a['tp'])} | {fmt(a['p99_us'], 2, 1e-3)} | **{fmt_sig(a['eff'])}** | "
                         f"{fmt(a['hwm_mb'], 1)} | {fmt(a['startup_s'], 1)} |")
            effs = [per[c]["eff"][0] for c in counts if per.get(c) and per[c].get("eff")]
            if len(effs) >= 2:
                L.append(f"| {lb} | spread | | | {100 * (max(effs) - min(effs)) / min(effs):.1f}% (max−min)/min | | |")
        L.append("")
    rows = goals(runs, workloads)
    if rows:
        L += ["## Goals: sluice ÷ best peer in this run", "",
              "Ratios > 1 are better for sluice (for p99: peer p99 ÷ sluice p99). The default variant is the "
              "first row of `SLUICE_VARIANTS`. Proxies = HAProxy and nginx; 'all' adds nftables DNAT, "
              "whose CPU is derived (see the docs).", "",
              "| goal | sluice (default) | best proxy | ratio | best of all | ratio | best sluice variant ÷ best proxy |",
              "|---|---|---|---|---|---|---|"]
        for g in rows:
            conv = (lambda x: f"{x / 1000:.2f} ms") if "p99" in g["goal"] else sig

            def r(x):
                if x is None:
                    return "—"
                return f"{x:.2f}×" if x >= g["target"] else f"**{x:.2f}×**"
            L.append(f"| {g['goal']} | {g['default'][0]}: {conv(g['default'][1])} | "
                     f"{g['proxy'][0]}: {conv(g['proxy'][1]) if g['proxy'][0] else '—'} | {r(g['r_proxy'])} | "
                     f"{g['any'][0]}: {conv(g['any'][1]) if g['any'][0] else '—'} | {r(g['r_any'])} | "
                     f"{g['best_sluice'][0]}: {r(g['r_best_proxy'])} |")
        L += ["", "Bold: goal not met.", ""]
        bulk = aggregate(runs, "udp-bulk", services=1) if "udp-bulk" in workloads else {}
        d = bulk.get("direct")
        if d and d.get("loss"):
            L += [f"UDP bulk loss (goal: sluice ≤ direct + 0.2 points; direct lost {d['loss'][0]:.2f}%): "
                  + ", ".join(f"{lb} {a['loss'][0]:.2f}%" + ("" if a['loss'][0] <= d['loss'][0] + 0.2 else " **(over)**")
                              for lb, a in bulk.items() if a["kind"] != "direct" and a.get("loss")), ""]
    if failures:
        L += ["## Failures", ""] + [f"- {f}" for f in failures] + [""]
    L += ["Charts: [throughput](throughput.svg) · [efficiency](efficiency.svg) · [latency](latency.svg)"
          + (" · [scale](scale.svg)" if counts else ""), ""]
    with open(f"{out}/summary.md", "w") as f:
        f.write("\n".join(L))


# ---- SVG -----------------------------------------------------------------------------
def svg_panels(title, panels, log=False):
    """panels: [(panel title, unit, rows)], rows: [(label, kind, [(series, med, lo, hi)])]."""
    W, LW, BW = 860, 210, 520
    y = 62
    parts = []
    series_colors = ["1.0", "0.65", "0.35"]
    for ptitle, unit, rows in panels:
        vals = [v for _, _, ss in rows for _, m, lo, hi in ss if m for v in (m, hi) if v]
        if not vals:
            continue
        vmax = max(vals)
        vmin = min(v for v in vals if v > 0)
        parts.append(f'<text x="10" y="{y}" font-weight="bold" font-size="14">{html.escape(ptitle)}</text>')
        parts.append(f'<text x="{LW + BW}" y="{y}" font-size="11" text-anchor="end" fill="#555">{html.escape(unit)}'
                     f'{" (log scale)" if log else ""}</text>')
        y += 8

        def X(v):
            if v is None or v <= 0:
                return LW
            if log:
                lo = math.log10(vmin) - 0.3
                return LW + BW * (math.log10(v) - lo) / (math.log10(vmax) - lo + 1e-9)
            return LW + BW * v / vmax
        for label, kind, ss in rows:
            h = 14 if len(ss) == 1 else 9
            parts.append(f'<text x="{LW - 6}" y="{y + h * len(ss) / 2 + 8}" font-size="12" text-anchor="end">{html.escape(label)}</text>')
            for i, (sname, m, lo, hi) in enumerate(ss):
                yy = y + 4 + i * h
                if m is None:
                    parts.append(f'<text x="{LW + 4}" y="{yy + h - 2}" font-size="10" fill="#999">n/a</text>')
                    continue
                parts.append(f'<rect x="{LW}" y="{yy}" width="{max(1, X(m) - LW):.1f}" height="{h - 1}" '
                             f'fill="{KIND_COLOR.get(kind, "#444")}" fill-opacity="{series_colors[i % 3]}"/>')
                if lo != hi:
                    parts.append(f'<line x1="{X(lo):.1f}" x2="{X(hi):.1f}" y1="{yy + h / 2:.1f}" y2="{yy + h / 2:.1f}" stroke="#000" stroke-width="1"/>')
                txt = (f"{sname} " if sname else "") + sig(m)
                parts.append(f'<text x="{max(X(m), X(hi)) + 4:.1f}" y="{yy + h - 2}" font-size="10">{html.escape(txt)}</text>')
            y += h * len(ss) + 6
        y += 22
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="10" y="20" font-size="16" font-weight="bold">{html.escape(title.split(" — ")[0])}</text>'
            f'<text x="10" y="38" font-size="11" fill="#555">{html.escape(" — ".join(title.split(" — ")[1:]))}</text>')
    return head + "".join(parts) + "</svg>\n"


def write_charts(out, info, runs, workloads):
    sub = f"{info['date']}, {info['host_cpus']} CPUs, kernel {info['kernel']}; bars: median, whiskers: min–max"
    tp_panels, eff_panels, lat_panels = [], [], []
    for w in workloads:
        agg = aggregate(runs, w, services=1)
        unit, _, eunit, _, _ = UNITS[w]
        tp_panels.append((w, unit, [(lb, a["kind"], [("",) + a["tp"]] if a["tp"] else [("", None, None, None)])
                                    for lb, a in agg.items()]))
        eff_panels.append((w, eunit, [(lb, a["kind"], [("",) + a["eff"]] if a["eff"] else [("", None, None, None)])
                                      for lb, a in agg.items() if a["kind"] != "direct"]))
        if w in LATENCY_WORKLOADS:
            rows = []
            for lb, a in agg.items():
                ss = []
                for p, n in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
                    ss.append((n,) + tuple(x / 1000 for x in a[p]) if a[p] else (n, None, None, None))
                rows.append((lb, a["kind"], ss))
            lat_panels.append((w, "ms", rows))
    with open(f"{out}/throughput.svg", "w") as f:
        f.write(svg_panels(f"Throughput per workload — {sub}", tp_panels))
    with open(f"{out}/efficiency.svg", "w") as f:
        f.write(svg_panels(f"Work per LB-CPU-second (higher is better) — {sub}", eff_panels))
    with open(f"{out}/latency.svg", "w") as f:
        f.write(svg_panels(f"Latency p50 / p99 / p99.9 (lower is better) — {sub}", lat_panels, log=True))
    counts, by = scale_rows(runs)
    if counts:
        panels = []
        for lb, per in by.items():
            rows = [(f"{c:,} Services", per[c]["kind"], [("",) + per[c]["eff"]] if per[c].get("eff") else [("", None, None, None)])
                    for c in counts if c in per and per[c]["n"]]
            panels.append((lb, "req per LB-CPU-s", rows))
        with open(f"{out}/scale.svg", "w") as f:
            f.write(svg_panels(f"Keep-alive cost vs number of Services — {sub}", panels))


def write_all(out, info, runs, failures, workloads):
    write_markdown(out, info, runs, failures, workloads)
    write_charts(out, info, runs, workloads)


def sanity(runs):
    """Real failures only (never performance): an LB that served nothing, wrong answers,
    or more than 2% of requests in error."""
    bad = []
    for r in runs:
        if "failed" in r:
            continue  # already reported
        tag = f"{r['lb']}/{r['workload']}/rep{r['rep']}"
        # (UDP loss is a measurement, never a failure; an LB that answers nothing is one)
        if r["bytes"] <= 0 or (r["workload"] not in ("iperf1", "iperf4") and r["requests"] <= 0):
            bad.append(f"{tag}: served nothing")
        ed = r.get("error_detail", {})
        if ed.get("status", 0) > 0:
            bad.append(f"{tag}: {ed['status']} non-2xx responses")
        if r["requests"] and r.get("errors", 0) > 0.02 * r["requests"]:
            bad.append(f"{tag}: {r['errors']} errors for {r['requests']} requests ({ed})")
    return bad


if __name__ == "__main__":
    # Re-render a results folder from its runs.json: python3 bench/suite/report.py DIR
    import json
    import sys
    d = sys.argv[1]
    with open(f"{d}/runs.json") as f:
        data = json.load(f)
    wls = [w for w in UNITS if w != "scale-keepalive" and any(r["workload"] == w for r in data["runs"])]
    write_all(d, data["meta"], data["runs"], data["failures"], wls)
    print(f"wrote {d}/summary.md and charts")
