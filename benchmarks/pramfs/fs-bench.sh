#!/usr/bin/env bash
# benchmarks/pramfs/fs-bench.sh: the measuring loop, run on the host and inside the VM.
#
#   fs-bench.sh OUT.jsonl REPS MIB PRAMFS TARGET...
#
# TARGET: tmpfs | pramfs:REGION | ext4dax:BLOCKDEV. For each repetition, every target
# in turn (side by side, so load changes hit all of them alike), on a fresh file system
# (new tmpfs mount, pramfs mkfs, mkfs.ext4): io.py writes MIB MiB in 1 MiB writes and
# fsyncs; then, except for tmpfs (its data lives only in the mount), the file system is
# unmounted and mounted again (with DROP_CACHES=1 the page cache is dropped in between)
# and io.py reads the file back, checking every block. A pramfs REGION that does not
# exist is created as a sparse file (and removed after each repetition).
# One JSON line per measurement goes to OUT.jsonl.
set -euo pipefail
out=$1 reps=$2 mib=$3 pramfs=$4; shift 4
io=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/io.py
mnt=$(mktemp -d /tmp/fs-bench.XXXXXX)
daemon=""
cleanup() {
  if grep -q " $mnt " /proc/mounts; then umount -l "$mnt" 2>/dev/null || true; fi
  [ -z "$daemon" ] || kill "$daemon" 2>/dev/null || true
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT

drop() { sync; if [ "${DROP_CACHES:-0}" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
record() { # record TARGET REP JSON
  python3 -c 'import json,sys; r=json.loads(sys.argv[3]); r["target"]=sys.argv[1]; r["rep"]=int(sys.argv[2]); print(json.dumps(r))' "$1" "$2" "$3" | tee -a "$out"
}
pramfs_mount() { # the daemon in the foreground (its own pid to wait for), then wait for the mount
  "$pramfs" mount -f "$1" "$mnt" & daemon=$!
  for _ in $(seq 1 400); do
    [ "$(stat -f -c %t "$mnt")" = 65735546 ] && return 0
    kill -0 "$daemon" 2>/dev/null || { echo "fs-bench: pramfs daemon exited" >&2; return 1; }
    sleep 0.05
  done
  echo "fs-bench: pramfs mount did not come up" >&2; return 1
}
pramfs_umount() { fusermount3 -u "$mnt"; wait "$daemon"; daemon=""; }

for rep in $(seq 1 "$reps"); do
  for target in "$@"; do
    kind=${target%%:*} dev=${target#*:}
    case "$kind" in
      tmpfs)
        mount -t tmpfs -o size=$((mib + 64))M tmpfs "$mnt"
        record tmpfs "$rep" "$(python3 "$io" write "$mnt/f" "$mib")"
        drop
        record tmpfs "$rep" "$(python3 "$io" read "$mnt/f")"
        umount "$mnt" ;;
      ext4dax)
        mkfs.ext4 -q -F "$dev"
        mount -o dax "$dev" "$mnt"
        record ext4-dax "$rep" "$(python3 "$io" write "$mnt/f" "$mib")"
        umount "$mnt"; drop
        mount -o dax "$dev" "$mnt"
        record ext4-dax "$rep" "$(python3 "$io" read "$mnt/f")"
        umount "$mnt" ;;
      pramfs)
        created=false
        if [ ! -e "$dev" ]; then truncate -s $((mib * 3 / 2 + 128))M "$dev"; created=true; fi
        "$pramfs" mkfs --force "$dev" >/dev/null
        pramfs_mount "$dev"
        record pramfs "$rep" "$(python3 "$io" write "$mnt/f" "$mib")"
        pramfs_umount; drop
        pramfs_mount "$dev"
        record pramfs "$rep" "$(python3 "$io" read "$mnt/f")"
        pramfs_umount
        if $created; then rm -f "$dev"; fi ;;
      *) echo "fs-bench: unknown target $target" >&2; exit 2 ;;
    esac
  done
done
