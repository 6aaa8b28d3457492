# What CRIU and the image store need: rename, unlink, truncate, symlink, links,
# chmod/chown, statfs free space, refusal of foreign regions and of a second mount.
. "$(dirname "$0")/lib.sh"
R=$WORK/region.img; M=$WORK/mnt
truncate -s 64M "$R"
"$PRAMFS" mkfs "$R"
mount_fg "$R" "$M"
free0=$(stat -f -c %f "$M")
head -c 8M /dev/urandom > "$M/f"; sync "$M/f"
free1=$(stat -f -c %f "$M")
[ "$free1" -le $((free0 - 2048)) ] || fail "statfs free did not decrease by 8 MiB ($free0 -> $free1)"
# rename: plain, over an existing file, a directory across directories
cp "$M/f" "$WORK/f.ref"
mv "$M/f" "$M/g"; [ ! -e "$M/f" ] && cmp "$M/g" "$WORK/f.ref" || fail "rename"
echo other > "$M/h"; mv "$M/h" "$M/g"; [ "$(cat "$M/g")" = other ] || fail "rename over existing"
mkdir -p "$M/d1/sub" "$M/d2"; echo x > "$M/d1/sub/x"
mv "$M/d1/sub" "$M/d2/"; [ "$(cat "$M/d2/sub/x")" = x ] || fail "directory rename"
mv "$M/d2" "$M/d2/sub/inside" 2>/dev/null && fail "rename into own subtree allowed"
rmdir "$M/d2" 2>/dev/null && fail "rmdir of a non-empty directory allowed"
sync "$M/g"
free2=$(stat -f -c %f "$M")
[ "$free2" -ge $((free1 + 2000)) ] || fail "statfs free did not increase after the 8 MiB file was replaced ($free1 -> $free2)"
# unlink while open: still readable through the descriptor
head -c 100000 /dev/urandom > "$M/open"; exec 7<"$M/open"; cp "$M/open" "$WORK/open.ref"; rm "$M/open"
[ ! -e "$M/open" ] || fail "unlink"
cmp <(cat <&7) "$WORK/open.ref" || fail "unlinked open file unreadable"; exec 7<&-
# truncate: shrink, grow (zeros), to zero
head -c 10000 /dev/urandom > "$M/t"; truncate -s 5000 "$M/t"; [ "$(stat -c %s "$M/t")" = 5000 ] || fail "shrink"
truncate -s 12000 "$M/t"; cmp <(tail -c 7000 "$M/t") <(head -c 7000 /dev/zero) || fail "grown part not zero"
truncate -s 0 "$M/t"; [ "$(stat -c %s "$M/t")" = 0 ] || fail "truncate 0"
# symlinks and hard links
ln -s d2/sub/x "$M/sym"; [ "$(readlink "$M/sym")" = d2/sub/x ] && [ "$(cat "$M/sym")" = x ] || fail "symlink"
ln "$M/g" "$M/g2"; [ "$(stat -c %h "$M/g")" = 2 ] || fail "hard link count"
# permissions and ownership
chmod 0640 "$M/g"; chown 1234:5678 "$M/g"; chmod 0700 "$M/d2"
mkdir "$M/sg"; chmod 2775 "$M/sg"; chown 1:77 "$M/sg"; touch "$M/sg/inherit"
[ "$(stat -c %g "$M/sg/inherit")" = 77 ] || fail "setgid directory group not inherited"
# a non-root user is refused where the mode says so (default_permissions)
if id nobody >/dev/null 2>&1 && command -v setpriv >/dev/null; then
  setpriv --reuid=nobody --regid=nogroup --clear-groups cat "$M/g" >/dev/null 2>&1 && fail "0640 file readable by nobody"
fi
# fsync through a real program
python3 -c "import os;fd=os.open('$M/fs',os.O_CREAT|os.O_WRONLY,0o600);os.write(fd,b'x'*70000);os.fsync(fd);os.close(fd)" || fail fsync
# write-only handles bypass the kernel's page cache (direct I/O): a file read (and
# cached) before is read back new after an overwrite through one, and data spliced
# from a pipe (CRIU's page writes) arrives whole
printf 'old-content-1234' > "$M/coh"; [ "$(cat "$M/coh")" = old-content-1234 ] || fail "coherence: setup"
printf 'NEW' | dd of="$M/coh" conv=notrunc status=none
[ "$(cat "$M/coh")" = NEW-content-1234 ] || fail "coherence: a cached file read stale after a write-only overwrite: $(cat "$M/coh")"
exec 8<"$M/coh"; [ "$(head -c 3 <&8)" = NEW ] || fail "coherence: setup 2"
printf 'XY' | dd of="$M/coh" conv=notrunc status=none
[ "$(cat "$M/coh")" = XYW-content-1234 ] || fail "coherence: a new open read stale while another handle was open"
exec 8<&-
head -c 3000000 /dev/urandom > "$WORK/splice.ref"
python3 - "$WORK/splice.ref" "$M/spliced" <<'PY' || fail "splice into a write-only file"
import os, sys
src = open(sys.argv[1], "rb").read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
r, w = os.pipe()
done = 0
while done < len(src):
    n = os.write(w, src[done:done + 65536])
    while n:
        n -= os.splice(r, fd, n)
    done += min(65536, len(src) - done)
os.fsync(fd); os.close(fd)
PY
cmp "$M/spliced" "$WORK/splice.ref" || fail "spliced data differs"
snapshot() { (cd "$M" && find . -printf '%y %m %u %g %s %n %p %l\n' | sort); }
snapshot > "$WORK/tree"
# a second daemon on the same region is refused
"$PRAMFS" mount -f "$R" "$WORK/mnt2" 2>"$WORK/second.err" && fail "second mount allowed"
grep -q "in use" "$WORK/second.err" || fail "second mount: unclear error: $(cat "$WORK/second.err")"
set +e; "$PRAMFS" fsck "$R" >/dev/null; rc=$?; set -e
[ $rc = 4 ] || fail "fsck of a mounted region: exit $rc, want 4"
unmount "$M"
"$PRAMFS" fsck "$R" || fail "fsck after the semantics run: exit $?"
mount_fg "$R" "$M"
snapshot | diff "$WORK/tree" - || fail "metadata differs after remount"
unmount "$M"
# mkfs refuses a region holding something else
head -c 1M /dev/urandom > "$WORK/foreign.img"; truncate -s 64M "$WORK/foreign.img"
"$PRAMFS" mkfs "$WORK/foreign.img" 2>"$WORK/mkfs.err" && fail "mkfs formatted a foreign region"
grep -q "refusing" "$WORK/mkfs.err" || fail "mkfs: unclear refusal"
set +e; "$PRAMFS" fsck "$WORK/foreign.img" >/dev/null 2>&1; rc=$?; set -e; [ $rc = 4 ] || fail "fsck of a foreign region: exit $rc, want 4"
echo "semantics: ok"
