# Guest job: PramFS over the legacy-pmem region survives a kexec.
# Boot 1 (old kernel): mkfs, mount, write files (random and patterned), record
# their SHA-256, unmount, kexec into the new kernel. Boot 2: fsck must be clean,
# mount, every file identical. $PRAMFS is the static pramfs binary (from /repo).
set -eu
modprobe nd_e820
modprobe nd_pmem
i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /mnt/pramfs
if grep -q 'rebootless.boot=1' /proc/cmdline; then
  uname -r >/job/kernel1
  "$PRAMFS" mkfs /dev/pmem0
  "$PRAMFS" mount /dev/pmem0 /mnt/pramfs
  mkdir -p /mnt/pramfs/set/images
  head -c 24000000 /dev/urandom >/mnt/pramfs/set/images/pages-1.img
  seq 1 200000 >/mnt/pramfs/set/images/counter.txt
  ln -s images/pages-1.img /mnt/pramfs/set/link
  sync
  (cd /mnt/pramfs && find . -type f | sort | xargs sha256sum) >/job/sums-before
  fusermount3 -u /mnt/pramfs
  "$PRAMFS" info /dev/pmem0 >/job/info-before
  new=$(cat /job/new-kernel)
  next=$(sed 's/rebootless.boot=1/rebootless.boot=2/' /proc/cmdline)
  kexec -s -l "/boot/vmlinuz-$new" --initrd="/boot/rebootless-initrd-$new.img" --append="$next"
  sync
  kexec -e
  exit 11
fi
uname -r >/job/kernel2
set +e
"$PRAMFS" fsck /dev/pmem0 >/job/fsck-after 2>&1
echo $? >/job/fsck-rc
set -e
"$PRAMFS" mount /dev/pmem0 /mnt/pramfs
(cd /mnt/pramfs && find . -type f | sort | xargs sha256sum) >/job/sums-after
readlink /mnt/pramfs/set/link >/job/link-after
fusermount3 -u /mnt/pramfs
