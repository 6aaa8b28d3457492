# Guest job for SystemdHostVmTests, run on each boot as systemd's job service (testbed/vm with
# rebootless.init=systemd: systemd is PID 1). Boot 1: two enabled services with Restart=always keep
# in-memory counters; `rebootless install-unit` installs the shipped resume unit; `rebootless update`
# checkpoints both and jumps through `systemctl kexec`. Boot 2 (the new kernel): before the resume unit runs,
# a unit removes a file service b holds open, so b cannot be restored; the boot's queued starts wait for the
# resume, which hands a its restored tree and lets b start afresh. The job writes what systemd shows to
# /job/after.txt and stops a through systemd. The host test reads the files this leaves in /job.
set -eu
. /job/lib.sh
show() { systemctl show "$1" -p ActiveState -p SubState -p MainPID -p NRestarts -p Result | sed "s/^/$2/"; }
copies() { pgrep -c -f "/job/svc/counter.py /job/svc/$1\$" || true; }

if ! grep -q 'rebootless.resume=' /proc/cmdline; then
  uname -r >/job/kernel1
  mkdir -p /job/svc/a /job/svc/b
  # Each counter keeps its file open (CRIU restores it) and its state in memory only: a fresh start shows
  # a new token and begins again at 1.
  cat >/job/svc/counter.py <<'PY'
import os, sys, time
token, i = os.urandom(4).hex(), 0
f = open(os.path.join(sys.argv[1], "counter"), "w")
while True:
    i += 1
    f.seek(0); f.write(f"{token} {i:08d}\n"); f.flush()
    time.sleep(0.2)
PY
  for s in a b; do
    cat >/etc/systemd/system/rebootless-counter-$s.service <<UNITFILE
[Unit]
Description=rebootless test service $s: an in-memory counter

[Service]
Type=simple
ExecStart=/usr/bin/python3 /job/svc/counter.py /job/svc/$s
StandardOutput=null
StandardError=null
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
UNITFILE
  done
  # On the next boot, before the resume: b's open file is gone, so CRIU cannot restore b.
  cat >/etc/systemd/system/rebootless-testbreak.service <<'UNITFILE'
[Unit]
Description=rebootless test: make service b's restore fail
DefaultDependencies=no
After=local-fs.target
Before=rebootless-resume.service
ConditionKernelCommandLine=rebootless.resume

[Service]
Type=oneshot
ExecStart=/bin/rm -f /job/svc/b/counter

[Install]
WantedBy=multi-user.target
UNITFILE
  systemctl daemon-reload
  systemctl enable rebootless-counter-a.service rebootless-counter-b.service rebootless-testbreak.service 2>/dev/null
  systemctl start rebootless-counter-a.service rebootless-counter-b.service
  install_resume_unit
  w=/etc/systemd/system/multi-user.target.wants
  persist /etc/systemd/system/rebootless-testbreak.service \
    /etc/systemd/system/rebootless-counter-a.service /etc/systemd/system/rebootless-counter-b.service \
    $w/rebootless-testbreak.service $w/rebootless-counter-a.service $w/rebootless-counter-b.service
  i=0; until [ -s /job/svc/a/counter ] && [ -s /job/svc/b/counter ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
  sleep 2
  { show rebootless-counter-a.service A; show rebootless-counter-b.service B
    echo "ACgroup=$(cat "/proc/$(systemctl show rebootless-counter-a.service -p MainPID --value)/cgroup")"; } >/job/before.txt
  cat /job/svc/a/counter >/job/counter-a-before
  cat /job/svc/b/counter >/job/counter-b-before
  new=$(cat /job/new-kernel)
  # The update writes the resume unit's order before the services; on this guest's disk, that is /job/persist.
  mkdir -p /job/persist/etc/systemd/system/rebootless-resume.service.d
  ln -s /job/persist/etc/systemd/system/rebootless-resume.service.d /etc/systemd/system/rebootless-resume.service.d
  # Jumps: systemd stops this job like every service, so nothing below runs unless the update failed.
  tool update --service rebootless-counter-a.service --service rebootless-counter-b.service --kernel "/boot/vmlinuz-$new" \
    --initrd "/boot/rebootless-initrd-$new.img" --append rebootless.boot=2 $STORE >/job/update.log 2>&1 || echo "update exited $?" >>/job/update.log
  exit 11
fi

uname -r >/job/kernel2
wait_for_resume
{
  echo "Kernel=$(uname -r)"
  echo "Pid1=$(cat /proc/1/comm)"
  resume_state
  echo "OrderLeft=$(ls /etc/systemd/system/rebootless-resume.service.d/ 2>/dev/null | tr '\n' ' ')"
  show rebootless-counter-a.service A
  show rebootless-counter-b.service B
  echo "ACgroup=$(cat "/proc/$(systemctl show rebootless-counter-a.service -p MainPID --value)/cgroup" 2>/dev/null)"
  echo "ACopies=$(copies a)"
  echo "BCopies=$(copies b)"
  echo "ACounter=$(cat /job/svc/a/counter)"
  sleep 2
  echo "BCounter=$(cat /job/svc/b/counter 2>/dev/null)"
  echo "ACounterLater=$(cat /job/svc/a/counter)"
  echo "Failed=$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
  echo "System=$(systemctl is-system-running || true)"
  systemctl stop rebootless-counter-a.service
  echo "AAfterStop=$(systemctl show rebootless-counter-a.service -p ActiveState --value) $(copies a)"
} >/job/after.txt 2>&1
journalctl -b -u rebootless-resume.service -u rebootless-counter-a.service -u rebootless-counter-b.service --no-pager >/job/journal.log 2>&1 || true
cat /job/after.txt
