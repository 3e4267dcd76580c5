#!/bin/sh
# Gives Xenia its subordinate user and group ids (as root; idempotent).
#   scripts/setup-subids.sh [COUNT]
# Every container domain runs in a user namespace with 65536 host ids of its own, taken
# from the ranges /etc/subuid and /etc/subgid give "xenia" (src/xenia/containers/idmap.py).
# Adds "xenia:START:COUNT" (default 67108864 ids: 1024 containers) to each file that has
# no xenia line, with START the first multiple of 65536 from 2^30 on that overlaps no
# range either file gives anyone else, so the same START serves both.
set -eu

if [ "$(id -u)" != 0 ]; then
    echo "setup-subids: run as root" >&2
    exit 1
fi

count=${1:-67108864}
for f in /etc/subuid /etc/subgid; do
    [ -e "$f" ] || install -m 0644 /dev/null "$f"
done
if grep -q '^xenia:' /etc/subuid && grep -q '^xenia:' /etc/subgid; then
    exit 0
fi
start=$(cat /etc/subuid /etc/subgid | awk -F: -v n="$count" '
    $1 != "xenia" && NF == 3 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ { s[++k] = $2; e[k] = $2 + $3 }
    END {
        start = 1073741824
        do {
            moved = 0
            for (i = 1; i <= k; i++)
                if (s[i] < start + n && start < e[i]) {
                    start = int((e[i] + 65535) / 65536) * 65536
                    moved = 1
                }
        } while (moved)
        printf "%d\n", start
    }')
if [ $((start + count)) -gt 4294967294 ]; then
    echo "setup-subids: no room for $count ids in /etc/subuid and /etc/subgid" >&2
    exit 1
fi
for f in /etc/subuid /etc/subgid; do
    if ! grep -q '^xenia:' "$f"; then
        echo "xenia:$start:$count" >> "$f"
        echo "setup-subids: $f: xenia:$start:$count"
    fi
done
