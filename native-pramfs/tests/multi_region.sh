# A file system over three regions: data spreads over all, region order is checked.
. "$(dirname "$0")/lib.sh"
M=$WORK/mnt
for i in 0 1 2; do truncate -s 16M "$WORK/r$i.img"; done
RS=$WORK/r0.img,$WORK/r1.img,$WORK/r2.img
"$PRAMFS" mkfs "$RS"
"$PRAMFS" info "$RS" | grep -q "^regions: 3" || fail "info: not 3 regions"
mount_fg "$RS" "$M"
head -c 36M /dev/urandom > "$WORK/big.ref"
cp "$WORK/big.ref" "$M/big"
unmount "$M"
"$PRAMFS" fsck "$RS" || fail "fsck over three regions"
mount_fg "$RS" "$M"; cmp "$M/big" "$WORK/big.ref" || fail "content over three regions"; unmount "$M"
for i in 1 2; do cmp -s <(head -c 1M "$WORK/r$i.img" | tail -c 512K) <(head -c 512K /dev/zero) && fail "region $i holds no data"; done
set +e; "$PRAMFS" fsck "$WORK/r0.img,$WORK/r2.img,$WORK/r1.img" >"$WORK/o" 2>&1; rc=$?; set -e
[ $rc = 4 ] || { cat "$WORK/o"; fail "regions in the wrong order: exit $rc, want 4"; }
grep -q "mkfs order" "$WORK/o" || fail "unclear message for swapped regions"
echo "multi_region: ok"
