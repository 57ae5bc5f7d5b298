#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the test fixtures and the documentation's examples.
# Idempotent (files are overwritten, never removed); run from anywhere.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/config corpus/control_request corpus/k8s_objects corpus/manifests

# config: every ```toml block of docs/configuration.md, and the smallest files.
awk '/^```toml$/ { n++; out = sprintf("corpus/config/docs-%02d.toml", n); inside = 1; next }
     /^```/      { inside = 0 }
     inside      { print > out }' ../docs/configuration.md
for f in ../deploy/deb/*.toml; do
  [ -e "$f" ] && cp "$f" "corpus/config/deploy-$(basename "$f")"
done
printf '[[service]]\nname = "a"\nport = 80\nendpoints = ["10.0.0.1"]\n' > corpus/config/smallest.toml
printf 'listen_addresses = ["127.0.0.1"]\nnode_port_range = "30000-30009"\nidle_timeout = "7days"\ndrain_timeout = "1day"\n[[service]]\nname = "a"\nport = 80\nnode_port = 30000\npolicy = "client-ip"\naffinity_timeout_seconds = 86400\nendpoints = [{ address = "127.0.0.2", port = 9000, weight = 65535 }]\n' > corpus/config/bounds.toml

# control_request: one line per command, as `sluice ctl` sends them.
i=0
while IFS= read -r line; do
  i=$((i + 1))
  printf '%s' "$line" > "corpus/control_request/ctl-$i"
done <<'LINES'
{"version":1,"command":"status"}
{"version":1,"command":"services"}
{"version":1,"command":"describe","service":"myfrontend","namespace":"workshop"}
{"version":1,"command":"endpoints","service":"workshop/myfrontend"}
{"version":1,"command":"stats"}
{"version":1,"command":"reload"}
{"version":1,"command":"endpoint","action":"weight","service":"workshop/myfrontend:http","address":"10.0.3.7:9000","weight":3}
{"version":1,"command":"endpoint","action":"drain","service":"a","address":"10.0.3.7"}
{"version":1,"command":"log-level","level":"sluice=debug"}
{"version":1,"command":"flows","service":"itest/dns","limit":10}
LINES

# k8s_objects: a node byte (bit 0: listen on 127.0.0.1 only, bit 1: this node's name), then
# a JSON array of the fixture objects.
for node in 0 3; do
  byte=$(printf "\\\\%03o" "$node")
  for pair in "k8s/myfrontend-service.json k8s/myfrontend-slice.json" \
              "k8s/helloworld-service.json k8s/helloworld-slices.json" \
              "api/myfrontend-service.json api/myfrontend-slice.json" \
              "api/helloworld-service.json api/helloworld-slice.json"; do
    set -- $pair
    name="$(basename "$1" .json)-$(dirname "$1")-$node"
    { printf "$byte["; cat "../tests/fixtures/$1"; printf ','; cat "../tests/fixtures/$2"; printf ']'; } \
      > "corpus/k8s_objects/$name"
  done
done

# manifests: a kind byte (even: YAML, odd: JSON), then a fixture file as it is.
for f in ../tests/fixtures/k8s/*.yaml; do
  { printf '\000'; cat "$f"; } > "corpus/manifests/$(basename "$f")"
done
for f in ../tests/fixtures/k8s/*.json ../tests/fixtures/api/*.json; do
  { printf '\001'; cat "$f"; } > "corpus/manifests/$(basename "$(dirname "$f")")-$(basename "$f")"
done
echo "seeded: $(for t in config control_request k8s_objects manifests; do printf '%s=%s ' "$t" "$(ls corpus/$t | wc -l)"; done)"
