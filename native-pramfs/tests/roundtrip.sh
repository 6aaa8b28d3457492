# Format, mount, write, read, unmount, remount: identical content (SHA-256), fsck clean.
. "$(dirname "$0")/lib.sh"
R=$WORK/region.img; M=$WORK/mnt
truncate -s 256M "$R"
"$PRAMFS" mkfs "$R"
"$PRAMFS" fsck "$R"
mount_fg "$R" "$M"
mkdir -p "$M/a/b/c" "$WORK/ref"
head -c 3000000 /dev/urandom > "$M/a/big.bin"
head -c 40000000 /dev/urandom > "$M/a/b/c/huge.bin"
# 1 MiB writes, as CRIU writes page images
dd if=/dev/urandom of="$M/a/dd.bin" bs=1M count=24 status=none
for i in $(seq 1 50); do head -c $((i * 997)) /dev/urandom > "$M/a/b/small$i"; done
: > "$M/empty"
ln -s a/big.bin "$M/link"
# sparse file and overwrite in the middle
dd if=/dev/urandom of="$M/sparse" bs=4096 seek=100 count=3 status=none
dd if=/dev/urandom of="$M/a/big.bin" bs=1000 seek=1001 count=7 conv=notrunc status=none
(cd "$M" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$WORK/ref/sums"
(cd "$M" && find . -printf '%y %m %u %g %s %p %l\n' | sort) > "$WORK/ref/tree"
unmount "$M"
"$PRAMFS" fsck "$R" || fail "fsck after clean unmount: exit $?"
mount_fg "$R" "$M"
(cd "$M" && sha256sum --quiet -c "$WORK/ref/sums") || fail "content differs after remount"
(cd "$M" && find . -printf '%y %m %u %g %s %p %l\n' | sort) | diff "$WORK/ref/tree" - || fail "tree differs after remount"
# read through the kernel cache dropped: read again after remount done; compare sparse hole zeros
cmp <(head -c 409600 "$M/sparse") <(head -c 409600 /dev/zero) || fail "hole not zero"
unmount "$M"
"$PRAMFS" ls "$R" | grep -q "/a/b/c/huge.bin" || fail "ls misses a file"
"$PRAMFS" info "$R" | grep -q "format_version: 1" || fail "info"
echo "roundtrip: ok"
