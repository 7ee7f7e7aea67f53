#!/bin/sh
# Replays the probes the tables of ../data_plane.rs were recorded from, against a real etcd
# (default /usr/bin/etcd, 3.4.23), each on a fresh single member on 127.0.0.1:23791.
# Usage: sh run.sh > answers.txt
set -e
cd "$(dirname "$0")"
ETCD=${ETCD:-/usr/bin/etcd}
run() {
  dir=$(mktemp -d)
  "$ETCD" --data-dir "$dir" --listen-client-urls http://127.0.0.1:23791 \
    --advertise-client-urls http://127.0.0.1:23791 --listen-peer-urls http://127.0.0.1:23801 \
    --initial-advertise-peer-urls http://127.0.0.1:23801 \
    --initial-cluster default=http://127.0.0.1:23801 >"$dir.log" 2>&1 &
  pid=$!
  sleep 3
  for script in "$@"; do echo "## $script"; python3 "$script"; done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir" "$dir.log"
}
"$ETCD" --version | head -1
run nested.py
run sem.py sem2.py   # sem2 continues on sem.py's key space (revision 11)
run sem3.py
