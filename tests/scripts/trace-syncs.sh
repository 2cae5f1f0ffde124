#!/usr/bin/env bash
# Which syscalls make a node's commits durable: runs station-bench (which
# starts the `keyfed` node as its child) under
#   strace -f -e trace=fdatasync,fsync,sync_file_range -c
# and prints strace's table (calls, errors and time per syscall, node and
# bench together; the bench itself syncs nothing).
#
# r13 wants an fdatasync (or fsync) behind every acknowledgement: sled 0.34
# alone ends a flush with sync_file_range, which writes no metadata and does
# not flush the drive's cache. With the store's sync path, fdatasync calls
# should number about twice the group commits (the log, then the mark).
#
# Usage: tests/scripts/trace-syncs.sh [station-bench flags]
#   default flags: --stations 1000 --renewals 20 --hold 20000
# Env: TARGET_DIR (default: $CARGO_TARGET_DIR or ./target), NO_BUILD=1 to
#      skip `cargo build --release -p keyfed-node -p keyfed-tests`.
# strace is installed with apt-get when missing and this runs as root.
set -euo pipefail

cd "$(dirname "$0")/../.."
target="${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}"

if ! command -v strace >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq strace >/dev/null
    else
        echo "strace is not installed (apt-get install strace, as root)" >&2
        exit 1
    fi
fi

if [ "${NO_BUILD:-}" != 1 ]; then
    CARGO_TARGET_DIR="$target" cargo build --release -p keyfed-node -p keyfed-tests
fi

if [ $# -eq 0 ]; then
    set -- --stations 1000 --renewals 20 --hold 20000
fi

table="$(mktemp)"
trap 'rm -f "$table"' EXIT
echo "load before: $(uptime)"
strace -f -e trace=fdatasync,fsync,sync_file_range -c -o "$table" \
    "$target/release/station-bench" "$@"
echo "load after: $(uptime)"
echo
echo "syscalls of station-bench and its node (strace -f -c):"
cat "$table"
