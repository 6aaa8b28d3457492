# kill -9 of the daemon during heavy writes at random instants, N times: after
# each, fsck is clean and every file is complete or absent (crashwriter verify).
. "$(dirname "$0")/lib.sh"
WRITER=$2; N=${3:-20}
R=$WORK/region.img; M=$WORK/mnt; LOG=$WORK/committed.log
truncate -s 256M "$R"
"$PRAMFS" mkfs "$R"
: > "$LOG"
SEED=$RANDOM
KILLED_WRITING=0
echo "crash test: seed $SEED, $N iterations"
for it in $(seq 1 "$N"); do
  mount_fg "$R" "$M"
  "$WRITER" verify "$M" "$LOG" "$SEED" >/dev/null || fail "iteration $it: state before writing is wrong"
  # keep the region from filling up: drop the oldest logged files now and then
  if [ "$(wc -l < "$LOG")" -gt 20 ]; then
    head -n -20 "$LOG" | while read -r n; do rm -f "$M/$n"; done
    tail -n 20 "$LOG" > "$LOG.new"; sync "$M"; mv "$LOG.new" "$LOG"
  fi
  "$WRITER" write "$M" "$LOG" "$SEED" 2>/dev/null &
  W=$!
  sleep "0.$(printf '%03d' $((RANDOM % 600 + 50)))"
  kill -0 "$W" 2>/dev/null && busy=writing || busy=idle
  kill -9 "$DAEMON"
  wait "$DAEMON" 2>/dev/null || true
  wait "$W" 2>/dev/null || true
  fusermount3 -u -z "$M" 2>/dev/null || umount -l "$M"
  set +e; "$PRAMFS" fsck "$R" > "$WORK/fsck.out"; rc=$?; set -e
  [ $rc = 0 ] || { cat "$WORK/fsck.out"; fail "iteration $it: fsck exit $rc after kill -9"; }
  mount_fg "$R" "$M"
  "$WRITER" verify "$M" "$LOG" "$SEED" || fail "iteration $it: files not complete after kill -9"
  unmount "$M"
  echo "iteration $it: killed while $busy, $(wc -l < "$LOG") logged files; fsck: $(grep -o "clean, generation [0-9]*" "$WORK/fsck.out")$(grep -q "^note" "$WORK/fsck.out" && echo " (note: interrupted commit seen)")"
  [ $busy = writing ] && KILLED_WRITING=$((KILLED_WRITING + 1))
done
echo "crash_kill9: ok ($N iterations, $KILLED_WRITING killed while the writer was writing)"
[ "$KILLED_WRITING" -ge $((N / 2)) ] || fail "too few kills hit the writer while it was writing"
