"""The load balancers under test, and how to start each one in the node namespace.

Every TCP LB serves the same two NodePorts on NODE_IP:
  HTTP_NODEPORT  -> the 3 pods' nginx on POD_HTTP_PORT (one new backend connection per
                    client connection, spread over the pods)
  IPERF_NODEPORT -> the 3 pods' iperf3 servers, with client-IP affinity (iperf3 opens a
                    control connection and data connections that must reach the same pod)
Every UDP LB serves:
  DNS_NODEPORT/udp   -> the 3 pods' UDP echo servers (udpgen.c) on POD_UDP_PORT, one flow per
                        query (nginx `proxy_responses 1`, sluice `udp_responses = 1`)
  IPERF_NODEPORT/tcp and /udp -> the pods' iperf3 servers with client-IP affinity (iperf3 -u
                        sends its control connection over TCP, its datagrams over UDP)

To add a sluice variant (a new driver, a forwarding mode, ...), add ONE line to
SLUICE_VARIANTS below: top-level TOML settings, per-service TOML keys, extra CLI args.
"""

CLIENT_IP = "198.18.0.1"
NODE_IP = "198.18.0.2"  # the node's address as the client sees it: every LB listens here
NODE_POD_IP = "198.18.1.1"  # the node's address on the pod network
PODS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
HTTP_NODEPORT = 30000
IPERF_NODEPORT = 30001
POD_HTTP_PORT = 9000
POD_PROXY_PORT = 9001  # the pods' nginx also accepts PROXY-protocol connections here
POD_IPERF_PORT = 5201
DNS_NODEPORT = 30053  # UDP: DNS-like request/response
POD_UDP_PORT = 5353  # the pods' UDP echo servers
SCALE_FILLER_BASE = 20000  # scale run: Services 2..N get NodePorts 20000, 20001, ...

# Node-namespace commands that sluice's transparent forwarding needs (see docs/client-address.md;
# `sluice` prints them for a config). Applied only while that variant runs: the nft hook would
# otherwise cost every other LB a little too.
TPROXY_SETUP = ["ip rule add fwmark 1 lookup 100", "ip route add local 0.0.0.0/0 dev lo table 100",
                "nft add table ip sluice_tproxy",
                "nft add chain ip sluice_tproxy pre { type filter hook prerouting priority mangle ; policy accept ; }",
                "nft add rule ip sluice_tproxy pre meta l4proto tcp socket transparent 1 meta mark set 0x1"]
TPROXY_TEARDOWN = ["ip rule del fwmark 1 lookup 100", "ip route flush table 100", "nft delete table ip sluice_tproxy"]

# One line per sluice variant:
#   (name, top-level settings, per-service keys (HTTP Service), extra `sluice run` args,
#    optional (node setup commands, node teardown commands))
SLUICE_VARIANTS = [
    ("sluice-uring-auto", {"driver": "uring", "relay": "auto", "pin_workers": False}, {}, []),
    ("sluice-uring-splice", {"driver": "uring", "relay": "splice", "pin_workers": False}, {}, []),
    # Issue 18's worker-count and pinning rows: the default row with one change each.
    ("sluice-uring-auto-1w", {"driver": "uring", "relay": "auto", "pin_workers": False, "workers": 1}, {}, []),
    ("sluice-uring-auto-pinned", {"driver": "uring", "relay": "auto", "pin_workers": True}, {}, []),
    ("sluice-uring-splice-pinned", {"driver": "uring", "relay": "splice", "pin_workers": True}, {}, []),
    ("sluice-uring-copy", {"driver": "uring", "relay": "copy", "pin_workers": False}, {}, []),
    ("sluice-epoll-splice", {"driver": "epoll", "relay": "splice", "pin_workers": False}, {}, []),
    ("sluice-proxy-v2", {"driver": "uring", "relay": "splice", "pin_workers": False},
     {"forwarding": "proxy-v2", "target_port": POD_PROXY_PORT}, []),
    ("sluice-transparent", {"driver": "uring", "relay": "splice", "pin_workers": False},
     {"forwarding": "transparent"}, [], (TPROXY_SETUP, TPROXY_TEARDOWN)),
]

# One line per sluice UDP variant: (name, top-level settings, in --quick too?). `workers`
# absent: sluice's default (one per CPU).
SLUICE_UDP_VARIANTS = [
    ("sluice-udp-uring", {"driver": "uring"}, True),
    ("sluice-udp-uring-1w", {"driver": "uring", "workers": 1}, False),
    ("sluice-udp-epoll", {"driver": "epoll"}, True),
    ("sluice-udp-epoll-1w", {"driver": "epoll", "workers": 1}, False),
]

# The sluice variant used for the Service-count scale run (one worker: see scale notes).
SCALE_VARIANT = "sluice-uring-auto"


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v) + '"'


def sluice_config(settings, service_extra, services=1, workers=2, maglev=None):
    """A sluice TOML file: the HTTP Service, the iperf Service, and services-1 filler
    Services (same 3 pods) for the scale run."""
    top = {"workers": workers, "listen_addresses": [NODE_IP]}
    if services > 1:
        top["node_port_range"] = f"{SCALE_FILLER_BASE}-32767"
    if maglev:
        top["maglev_table_size"] = maglev
    top.update(settings)
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    http = {"name": "web", "namespace": "bench", "port": 80, "target_port": POD_HTTP_PORT,
            "node_port": HTTP_NODEPORT, "endpoints": PODS}
    http.update(service_extra)
    iperf = {"name": "iperf", "namespace": "bench", "port": POD_IPERF_PORT,
             "node_port": IPERF_NODEPORT, "hash_key": "client-ip", "endpoints": PODS}
    blocks = [http, iperf]
    for i in range(services - 1):
        blocks.append({"name": f"filler-{i}", "namespace": "bench", "port": 80,
                       "target_port": POD_HTTP_PORT, "node_port": SCALE_FILLER_BASE + i,
                       "endpoints": PODS})
    for b in blocks:
        lines.append("")
        lines.append("[[service]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in b.items())
    return "\n".join(lines) + "\n"


def sluice_udp_config(settings):
    """A sluice TOML file for the UDP rows: the DNS-like Service (one flow per query) and
    iperf3 over TCP (control) and UDP (data), client-IP affinity on both."""
    top = {"listen_addresses": [NODE_IP], "pin_workers": False}
    top.update(settings)
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    blocks = [
        {"name": "dns", "namespace": "bench", "protocol": "UDP", "port": 53,
         "target_port": POD_UDP_PORT, "node_port": DNS_NODEPORT, "udp_responses": 1, "endpoints": PODS},
        {"name": "iperf", "namespace": "bench", "port_name": "control", "port": POD_IPERF_PORT,
         "node_port": IPERF_NODEPORT, "hash_key": "client-ip", "endpoints": PODS},
        {"name": "iperf", "namespace": "bench", "port_name": "data", "protocol": "UDP",
         "port": POD_IPERF_PORT, "node_port": IPERF_NODEPORT, "hash_key": "client-ip", "endpoints": PODS},
    ]
    for b in blocks:
        lines.append("")
        lines.append("[[service]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in b.items())
    return "\n".join(lines) + "\n"


def haproxy_config(threads):
    servers = "\n".join(f"  server p{i} {ip}:{POD_HTTP_PORT}" for i, ip in enumerate(PODS))
    iperf = "\n".join(f"  server p{i} {ip}:{POD_IPERF_PORT}" for i, ip in enumerate(PODS))
    # maxconn: RLIMIT_NOFILE is 20000 on the dev machine and HAProxy refuses to start when
    # 2*maxconn + 2*maxpipes (maxconn/4 with splice) + listeners does not fit: 8000 asks 20015.
    return f"""global
  maxconn 7000
  nbthread {threads}
defaults
  mode tcp
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  # HAProxy 2.6's splice-auto does not splice; force it both ways.
  option splice-request
  option splice-response
frontend web
  bind {NODE_IP}:{HTTP_NODEPORT}
  default_backend pods
backend pods
  balance roundrobin
{servers}
frontend iperf
  bind {NODE_IP}:{IPERF_NODEPORT}
  default_backend iperf
backend iperf
  balance source
{iperf}
"""


def nginx_stream_config(workers, tmp):
    servers = "\n".join(f"    server {ip}:{POD_HTTP_PORT};" for ip in PODS)
    iperf = "\n".join(f"    server {ip}:{POD_IPERF_PORT};" for ip in PODS)
    return f"""user root;
worker_processes {workers};
worker_rlimit_nofile 19000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events {{ worker_connections 8000; }}
stream {{
  upstream pods {{
{servers}
  }}
  upstream iperf {{
    hash $remote_addr consistent;
{iperf}
  }}
  server {{ listen {NODE_IP}:{HTTP_NODEPORT} reuseport; proxy_pass pods; }}
  server {{ listen {NODE_IP}:{IPERF_NODEPORT} reuseport; proxy_pass iperf; }}
}}
"""


def nginx_udp_config(workers, tmp):
    dns = "\n".join(f"    server {ip}:{POD_UDP_PORT};" for ip in PODS)
    iperf = "\n".join(f"    server {ip}:{POD_IPERF_PORT};" for ip in PODS)
    return f"""user root;
worker_processes {workers};
worker_rlimit_nofile 19000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events {{ worker_connections 8000; }}
stream {{
  upstream dns {{
{dns}
  }}
  upstream iperf {{
    hash $remote_addr consistent;
{iperf}
  }}
  server {{ listen {NODE_IP}:{DNS_NODEPORT} udp reuseport; proxy_pass dns; proxy_responses 1; proxy_timeout 30s; }}
  server {{ listen {NODE_IP}:{IPERF_NODEPORT} reuseport; proxy_pass iperf; }}
  server {{ listen {NODE_IP}:{IPERF_NODEPORT} udp reuseport; proxy_pass iperf; proxy_timeout 30s; }}
}}
"""


def nft_ruleset(services=1):
    """kube-proxy's nftables mode, reduced to what a NodePort connection traverses:
    a verdict map NodePort -> service chain, mark for masquerade, `numgen random` over
    endpoint chains that DNAT, masquerade on the way out. (kube-proxy's ClientIP affinity
    uses per-endpoint sets; the iperf Service uses `jhash ip saddr` as a cheaper stand-in.)"""
    out = ["table ip kube-proxy {"]

    def chain(name, *stmts):
        out.append(f"  chain {name} {{")
        out.extend(f"    {x}" for x in stmts)
        out.append("  }")
    chain("mark-for-masquerade", "meta mark set meta mark | 0x4000")
    chain("masquerading", "meta mark & 0x4000 == 0 return", "meta mark set meta mark ^ 0x4000",
          "masquerade fully-random")
    chain("nat-prerouting", "type nat hook prerouting priority dstnat; policy accept;", "jump services")
    chain("nat-postrouting", "type nat hook postrouting priority srcnat; policy accept;", "jump masquerading")
    chain("filter-forward", "type filter hook forward priority filter; policy accept;", "ct state invalid drop")
    svcs = [("web", HTTP_NODEPORT, POD_HTTP_PORT, "numgen random mod 3", "tcp"),
            ("iperf", IPERF_NODEPORT, POD_IPERF_PORT, "jhash ip saddr mod 3 seed 0x5eed", "tcp"),
            ("dns", DNS_NODEPORT, POD_UDP_PORT, "numgen random mod 3", "udp"),
            ("iperf-udp", IPERF_NODEPORT, POD_IPERF_PORT, "jhash ip saddr mod 3 seed 0x5eed", "udp")]
    elems = []
    # Filler Services of the scale run: N-2 more NodePorts in the verdict map (what a packet's
    # lookup depends on) that share one chain. kube-proxy's own layout (5 chains per Service)
    # takes ~70 s to load with 10,000 Services here: chain lookup by name is linear in
    # nf_tables. The measured Service keeps the full layout.
    if services > 1:
        pods = ", ".join(f"{j} : {ip} . {POD_HTTP_PORT}" for j, ip in enumerate(PODS))
        chain("ext-filler", "meta mark set meta mark | 0x4000",
              f"meta l4proto tcp dnat ip to numgen random mod 3 map {{ {pods} }}")
    for i in range(services - 1):
        elems.append(f"tcp . {SCALE_FILLER_BASE + i} : goto ext-filler")
    for name, np, tp, pick, proto in svcs:
        seps = []
        for j, ip in enumerate(PODS):
            chain(f"sep-{name}-{j}", f"meta l4proto {proto} dnat to {ip}:{tp}")
            seps.append(f"{j} : goto sep-{name}-{j}")
        chain(f"svc-{name}", f"{pick} vmap {{ {', '.join(seps)} }}")
        chain(f"ext-{name}", "jump mark-for-masquerade", f"goto svc-{name}")
        elems.append(f"{proto} . {np} : goto ext-{name}")
    out += ["  map service-nodeports {", "    type inet_proto . inet_service : verdict",
            "    elements = { " + ", ".join(elems) + " }", "  }"]
    chain("services", f"ip daddr {NODE_IP} meta l4proto . th dport vmap @service-nodeports")
    out.append("}")
    return "\n".join(out) + "\n"


def pod_nginx_config(tmp, workers=2):
    listens = "\n".join(f"    listen {ip}:{POD_HTTP_PORT} reuseport;\n"
                        f"    listen {ip}:{POD_PROXY_PORT} proxy_protocol reuseport;" for ip in PODS)
    return f"""user root;
worker_processes {workers};
worker_rlimit_nofile 19000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8000; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  server {{
{listens}
    root {tmp}/www;
  }}
}}
"""
