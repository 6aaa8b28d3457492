# Shared helpers of the pramfs shell tests. $PRAMFS is the binary under test.
set -euo pipefail
PRAMFS=$1
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
WORK=$(mktemp -d "$base/pramfs-test.XXXXXX")
DAEMONS=()
cleanup() {
  for m in "$WORK"/mnt*; do
    if mountpoint -q "$m" 2>/dev/null || grep -q " $m " /proc/mounts; then fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; fi
  done
  for p in "${DAEMONS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# mount_fg REGION DIR: starts the daemon in the foreground (stderr to a file), waits for the mount.
mount_fg() {
  mkdir -p "$2"
  "$PRAMFS" mount -f "$1" "$2" 2>>"$WORK/daemon.err" &
  DAEMON=$!
  DAEMONS+=("$DAEMON")
  for _ in $(seq 1 200); do
    if [ "$(stat -f -c %t "$2" 2>/dev/null)" = 65735546 ]; then return 0; fi
    kill -0 "$DAEMON" 2>/dev/null || { cat "$WORK/daemon.err" >&2; fail "daemon exited before mounting"; }
    sleep 0.05
  done
  fail "mount of $1 on $2 did not become live"
}

# unmount DIR: clean unmount, then wait for the daemon to exit with 0.
unmount() {
  fusermount3 -u "$1"
  wait "$DAEMON" || { cat "$WORK/daemon.err" >&2; fail "daemon exited with $?"; }
}
