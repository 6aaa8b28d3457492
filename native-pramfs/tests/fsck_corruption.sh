# fsck finds a flipped byte in metadata and in file data; -r repairs; exit codes 0/1/2.
. "$(dirname "$0")/lib.sh"
R=$WORK/region.img; M=$WORK/mnt
truncate -s 64M "$R"
"$PRAMFS" mkfs "$R"
mount_fg "$R" "$M"
head -c 300000 /dev/urandom > "$M/victim"; head -c 50000 /dev/urandom > "$M/keep"; cp "$M/keep" "$WORK/keep.ref"
unmount "$M"
cp "$R" "$WORK/pristine.img"
"$PRAMFS" fsck "$R" >/dev/null || fail "fsck of a clean region"
flip() { # flip FILE OFFSET
  local b; b=$(dd if="$1" bs=1 skip="$2" count=1 status=none | od -An -tu1 | tr -d ' ')
  printf "$(printf '\\%03o' $(( (b ^ 0x5a) & 255 )))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
gen=$("$PRAMFS" info "$R" | sed -n 's/^generation: //p')
slot=$((gen % 2))
metablocks=$(( $("$PRAMFS" info "$R" | sed -n 's/^metadata_area_bytes: //p') / 4096 ))
meta_off=$(( (2 + slot * metablocks) * 4096 ))
# 1. metadata: a byte inside the first inode record of the active state
flip "$R" $((meta_off + 64 + 20))
set +e
"$PRAMFS" fsck "$R" > "$WORK/out1"; rc=$?
set -e
[ $rc = 2 ] || { cat "$WORK/out1"; fail "flipped metadata byte: fsck exit $rc, want 2"; }
grep -q "checksum" "$WORK/out1" || fail "fsck did not name the checksum"
"$PRAMFS" mount -f "$R" "$M" 2>"$WORK/mount.err" && fail "mount of corrupt metadata allowed"
grep -q "fsck" "$WORK/mount.err" || fail "mount refusal does not say to run fsck"
set +e; "$PRAMFS" fsck -r "$R" >"$WORK/out1r"; rc=$?; set -e
[ $rc = 1 ] || { cat "$WORK/out1r"; fail "fsck -r on metadata damage: exit $rc, want 1"; }
"$PRAMFS" fsck "$R" >/dev/null || fail "not clean after repair"
# 2. file data: a byte inside the victim's data (find it in the region)
cp "$WORK/pristine.img" "$R"
mount_fg "$R" "$M"; head -c 64 "$M/victim" > "$WORK/needle"; unmount "$M"
off=$(python3 -c "import sys;d=open('$R','rb').read();print(d.find(open('$WORK/needle','rb').read()))")
[ "$off" -gt 0 ] || fail "victim data not found in the region"
flip "$R" $((off + 10))
set +e
"$PRAMFS" fsck "$R" > "$WORK/out2"; rc=$?
set -e
[ $rc = 2 ] || { cat "$WORK/out2"; fail "flipped data byte: fsck exit $rc, want 2"; }
grep -q "victim" "$WORK/out2" && grep -q "data checksum" "$WORK/out2" || { cat "$WORK/out2"; fail "fsck did not name the file"; }
set +e; "$PRAMFS" fsck -r "$R" >"$WORK/out2r"; rc=$?; set -e
[ $rc = 1 ] || fail "fsck -r on data damage: exit $rc, want 1"
"$PRAMFS" fsck "$R" >/dev/null || fail "not clean after data repair"
mount_fg "$R" "$M"
[ ! -e "$M/victim" ] || fail "the damaged file is still there"
cmp "$M/keep" "$WORK/keep.ref" || fail "an intact file was lost"
unmount "$M"
# 3. a damaged superblock copy (the newest): the previous state is used only by fsck -r
cp "$WORK/pristine.img" "$R"
flip "$R" $((slot * 4096 + 40))
set +e; "$PRAMFS" fsck "$R" >"$WORK/out3"; rc=$?; set -e
[ $rc = 0 ] || { cat "$WORK/out3"; fail "torn newest superblock: exit $rc, want 0 (an interrupted commit looks the same)"; }
grep -q "note" "$WORK/out3" || fail "no note about the damaged copy"
echo "fsck_corruption: ok"
