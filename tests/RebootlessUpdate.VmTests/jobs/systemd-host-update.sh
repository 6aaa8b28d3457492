# Guest job of the systemd host tests (SystemdHostBoot), run on each boot as systemd's job service (testbed/vm with
# rebootless.init=systemd: systemd is PID 1, with dbus and logind). Four scenarios share one jump, as a host's
# workloads do: enabled services (scenario-services.sh), a tree left in a login session (scenario-session.sh), a runc
# container (scenario-runc.sh) and podman containers (scenario-podman.sh). Each scenario file defines NAME_setup
# (boot 1: start its workload, write what it sees to /job/NAME), NAME_targets (its `rebootless update` options) and
# NAME_after (boot 2: print what it sees as KEY=VALUE lines). One boot pair under emulation costs minutes; the
# scenarios' workloads are independent of each other. Two of them make the resume refuse a target on purpose, so
# the resume unit ends failed: every scenario's after.txt says how it ended, and the tests read the journal for
# their own targets. The host tests read /job/NAME (the shared files are copied there at the end).
set -eu
. /job/lib.sh
SCENARIOS="services session runc podman"
for s in $SCENARIOS; do . "/job/scenario-$s.sh"; done

if ! grep -q 'rebootless.resume=' /proc/cmdline; then
  uname -r >/job/kernel1
  for s in $SCENARIOS; do mkdir -p "/job/$s"; done
  install_resume_unit
  for s in $SCENARIOS; do "${s}_setup"; done
  targets=$(for s in $SCENARIOS; do "${s}_targets"; done | tr '\n' ' ')
  echo "$targets" >/job/targets
  new=$(cat /job/new-kernel)
  # Jumps: systemd stops this job like every service, so nothing below runs unless the update failed.
  # shellcheck disable=SC2086
  tool update $targets --kernel "/boot/vmlinuz-$new" --initrd "/boot/rebootless-initrd-$new.img" --append rebootless.boot=2 $STORE \
    >/job/update.log 2>&1 || echo "update exited $?" >>/job/update.log
  exit 11
fi

uname -r >/job/kernel2
wait_for_resume
{
  echo "Kernel=$(uname -r)"
  echo "Pid1=$(cat /proc/1/comm)"
  resume_state
  echo "Failed=$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
  echo "System=$(systemctl is-system-running || true)"
} >/job/common.txt 2>&1
journalctl -b -u rebootless-resume.service -u 'rebootless-counter-*.service' --no-pager >/job/journal.log 2>&1 || true
# One scenario's checks that fail do not keep the others from theirs: each is its own subshell.
for s in $SCENARIOS; do
  { cat /job/common.txt; ("${s}_after") || echo "AfterExit=$?"; } >"/job/$s/after.txt" 2>&1
  cp /job/kernel1 /job/kernel2 /job/update.log /job/journal.log "/job/$s/"
  echo "== $s"; cat "/job/$s/after.txt"
done
