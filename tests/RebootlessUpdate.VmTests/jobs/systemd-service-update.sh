# Guest job for SystemdHostVmTests, run on each boot as systemd's job service (testbed/vm with
# rebootless.init=systemd: systemd is PID 1). Boot 1: a service with Restart=always keeps an in-memory
# counter; `rebootless install-unit` installs the shipped resume unit; `rebootless update --service`
# checkpoints the service and jumps through `systemctl kexec`. Boot 2 (the new kernel): the resume unit
# has run before multi-user.target; the job writes what systemd shows to /job/after.txt, then stops the
# service through systemd. The host test reads the files this leaves in /job.
set -eu
UNIT=rebootless-counter.service
STORE="--pmem /dev/pmem0 --store-mount /run/rebootless/store --criu /usr/sbin/criu"
tool() { dotnet "$(cat /job/tool)" "$@"; }
show() { systemctl show "$1" -p ActiveState -p SubState -p MainPID -p NRestarts -p Result; }
# Files kept in /job/persist are this guest's disk: vm-init copies them into / on every boot.
persist() { for f in "$@"; do mkdir -p "/job/persist$(dirname "$f")"; cp -a "$f" "/job/persist$f"; done; }

if ! grep -q 'rebootless.resume=' /proc/cmdline; then
  uname -r >/job/kernel1
  mkdir -p /job/svc
  # The counter keeps its file open (CRIU restores it) and its state in memory only: a fresh start would
  # show a new token and begin again at 1.
  cat >/job/svc/counter.py <<'PY'
import os, time
token, i = os.urandom(4).hex(), 0
f = open("/job/svc/counter", "w")
while True:
    i += 1
    f.seek(0); f.write(f"{token} {i:08d}\n"); f.flush()
    time.sleep(0.2)
PY
  cat >/etc/systemd/system/$UNIT <<'UNITFILE'
[Unit]
Description=rebootless test service: an in-memory counter

[Service]
Type=simple
ExecStart=/usr/bin/python3 /job/svc/counter.py
WorkingDirectory=/job/svc
StandardOutput=null
StandardError=null
Restart=always
RestartSec=1
UNITFILE
  printf 'REBOOTLESS_OPTIONS="%s"\n' "$STORE" >/etc/default/rebootless
  systemctl daemon-reload
  systemctl start $UNIT
  tool install-unit >/job/install-unit.log 2>&1
  persist /etc/systemd/system/$UNIT /etc/default/rebootless /etc/systemd/system/rebootless-resume.service \
    /etc/systemd/system/multi-user.target.wants/rebootless-resume.service
  i=0; until [ -s /job/svc/counter ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
  sleep 2
  show $UNIT >/job/before.txt
  echo "Cgroup=$(cat "/proc/$(systemctl show $UNIT -p MainPID --value)/cgroup")" >>/job/before.txt
  cat /job/svc/counter >/job/counter-before
  new=$(cat /job/new-kernel)
  # Jumps: systemd stops this job like every service, so nothing below runs unless the update failed.
  tool update --service $UNIT --kernel "/boot/vmlinuz-$new" --initrd "/boot/rebootless-initrd-$new.img" \
    --append rebootless.boot=2 $STORE >/job/update.log 2>&1 || echo "update exited $?" >>/job/update.log
  show $UNIT >>/job/update.log
  exit 11
fi

uname -r >/job/kernel2
{
  echo "Kernel=$(uname -r)"
  echo "Pid1=$(cat /proc/1/comm)"
  systemctl show rebootless-resume.service -p ActiveState -p Result -p ExecMainStatus | sed 's/^/Resume/'
  show $UNIT
  pid=$(systemctl show $UNIT -p MainPID --value)
  echo "Cgroup=$(cat "/proc/$pid/cgroup" 2>/dev/null)"
  echo "Copies=$(pgrep -c -f /job/svc/counter.py || true)"
  echo "Counter=$(cat /job/svc/counter)"
  sleep 1
  echo "CounterLater=$(cat /job/svc/counter)"
  echo "Failed=$(systemctl --failed --no-legend --plain | tr '\n' ' ')"
  echo "System=$(systemctl is-system-running || true)"
  systemctl stop $UNIT
  echo "AfterStop=$(systemctl show $UNIT -p ActiveState --value) $(pgrep -c -f /job/svc/counter.py || true)"
} >/job/after.txt 2>&1
journalctl -b -u rebootless-resume.service -u $UNIT --no-pager >/job/journal.log 2>&1 || true
cat /job/after.txt
