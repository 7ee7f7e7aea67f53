#!/usr/bin/env bash
# Side-by-side load on loopback: etcd (Debian's etcd-server, if installed) and rusd on each
# default engine, 16 and 64 clients, 8-byte keys / 256-byte values, puts then single-key ranges.
# Usage: DUR=sync|buffered OPS=20000 rusd-server/examples/side_by_side.sh
# Builds first: cargo build --release -p rusd-server --bin rusd --example load
set -u
T="${CARGO_TARGET_DIR:-target}/release"
LOAD="$T/examples/load"
RUSD="$T/rusd"
OPS=${OPS:-20000}
DUR=${DUR:-sync}
echo "| server | clients | put/s | put p50 ms | put p99 ms | range/s | range p50 ms | range p99 ms | peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|"
for clients in 16 64; do
  if command -v etcd >/dev/null; then
    d=$(mktemp -d)
    etcd --data-dir "$d" --listen-client-urls http://127.0.0.1:23801 \
      --advertise-client-urls http://127.0.0.1:23801 --listen-peer-urls http://127.0.0.1:23802 \
      --initial-advertise-peer-urls http://127.0.0.1:23802 \
      --initial-cluster default=http://127.0.0.1:23802 --log-level error >/dev/null 2>&1 &
    pid=$!
    sleep 2
    "$LOAD" --endpoint http://127.0.0.1:23801 --clients "$clients" --ops "$OPS" --pid $pid \
      --label "etcd $(etcd --version | head -1 | awk '{print $3}')"
    kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$d"
  fi
  for engine in memory sled redb; do
    d=$(mktemp -d)
    "$RUSD" --data-dir "$d" --backend $engine --durability "$DUR" \
      --listen-client-urls http://127.0.0.1:23803 --log-level error &
    pid=$!
    sleep 1
    "$LOAD" --endpoint http://127.0.0.1:23803 --clients "$clients" --ops "$OPS" --pid $pid \
      --label "rusd $engine ($DUR)"
    kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$d"
  done
done
