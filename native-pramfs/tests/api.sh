# libpramfs.so's C API against the tool: a populated region and a 2-region set.
. "$(dirname "$0")/lib.sh"
CHECKER=$2
R=$WORK/region.img; M=$WORK/mnt
truncate -s 64M "$R"
"$PRAMFS" mkfs "$R"
mount_fg "$R" "$M"
mkdir "$M/dir"
head -c 300000 /dev/urandom > "$M/dir/a"; head -c 50000 /dev/urandom > "$M/b"; ln -s dir/a "$M/link"
unmount "$M"
truncate -s 32M "$WORK/r0.img" "$WORK/r1.img"
"$PRAMFS" mkfs "$WORK/r0.img,$WORK/r1.img"
"$CHECKER" "$PRAMFS" "$R" "$WORK/r0.img,$WORK/r1.img"
