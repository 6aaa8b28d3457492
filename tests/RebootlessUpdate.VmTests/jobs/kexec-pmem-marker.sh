# Guest job (run by testbed/vm on each boot): on the old kernel, write a random
# marker into the legacy-pmem region and kexec into the new kernel; on the new
# kernel, read the region back. The host test compares the files left in /job.
set -eu
load_pmem() {
  modprobe nd_e820
  modprobe nd_pmem
  i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  [ -b /dev/pmem0 ] || { echo "no /dev/pmem0"; exit 10; }
}
if grep -q 'rebootless.boot=1' /proc/cmdline; then
  uname -r >/job/kernel1
  load_pmem
  echo "marker-$(cat /proc/sys/kernel/random/uuid)" >/job/marker-written
  dd if=/job/marker-written of=/dev/pmem0 bs=4096 conv=sync,fsync status=none
  new=$(cat /job/new-kernel)
  next=$(sed 's/rebootless.boot=1/rebootless.boot=2/' /proc/cmdline)
  kexec -s -l "/boot/vmlinuz-$new" --initrd="/boot/rebootless-initrd-$new.img" --append="$next"
  sync
  kexec -e
  echo "kexec -e returned"
  exit 11
fi
uname -r >/job/kernel2
load_pmem
head -n 1 /dev/pmem0 | tr -d '\0' >/job/marker-read
echo "read back: $(cat /job/marker-read)"
