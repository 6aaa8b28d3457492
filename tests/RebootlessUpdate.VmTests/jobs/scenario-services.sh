# Scenario of systemd-host-update.sh for SystemdHostVmTests: two enabled services with Restart=always keep in-memory
# counters; `rebootless update --service` checkpoints both. On the new kernel, before the resume unit runs, a unit
# removes a file service b holds open, so b cannot be restored; the boot's queued starts wait for the resume, which
# hands a its restored tree and lets b start afresh. The checks stop a through systemd. Files: /job/services.
services_show() { systemctl show "$1" -p ActiveState -p SubState -p MainPID -p NRestarts -p Result | sed "s/^/$2/"; }
services_copies() { pgrep -c -f "/job/svc/counter.py /job/svc/$1\$" || true; }

services_setup() {
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
  # (Not $s: the job's own loop over the scenarios uses it, and sh functions have no locals.)
  for svc in a b; do
    cat >/etc/systemd/system/rebootless-counter-$svc.service <<UNITFILE
[Unit]
Description=rebootless test service $svc: an in-memory counter

[Service]
Type=simple
ExecStart=/usr/bin/python3 /job/svc/counter.py /job/svc/$svc
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
  w=/etc/systemd/system/multi-user.target.wants
  persist /etc/systemd/system/rebootless-testbreak.service \
    /etc/systemd/system/rebootless-counter-a.service /etc/systemd/system/rebootless-counter-b.service \
    $w/rebootless-testbreak.service $w/rebootless-counter-a.service $w/rebootless-counter-b.service
  i=0; until [ -s /job/svc/a/counter ] && [ -s /job/svc/b/counter ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
  sleep 2
  { services_show rebootless-counter-a.service A; services_show rebootless-counter-b.service B
    echo "ACgroup=$(cat "/proc/$(systemctl show rebootless-counter-a.service -p MainPID --value)/cgroup")"; } >/job/services/before.txt
  cat /job/svc/a/counter >/job/services/counter-a-before
  cat /job/svc/b/counter >/job/services/counter-b-before
  # The update writes the resume unit's order before the services; on this guest's disk, that is /job/persist.
  mkdir -p /job/persist/etc/systemd/system/rebootless-resume.service.d
  ln -s /job/persist/etc/systemd/system/rebootless-resume.service.d /etc/systemd/system/rebootless-resume.service.d
}

services_targets() { echo "--service rebootless-counter-a.service --service rebootless-counter-b.service"; }

services_after() {
  echo "OrderLeft=$(ls /etc/systemd/system/rebootless-resume.service.d/ 2>/dev/null | tr '\n' ' ')"
  services_show rebootless-counter-a.service A
  services_show rebootless-counter-b.service B
  echo "ACgroup=$(cat "/proc/$(systemctl show rebootless-counter-a.service -p MainPID --value)/cgroup" 2>/dev/null)"
  echo "ACopies=$(services_copies a)"
  echo "BCopies=$(services_copies b)"
  echo "ACounter=$(cat /job/svc/a/counter)"
  sleep 2
  echo "BCounter=$(cat /job/svc/b/counter 2>/dev/null)"
  echo "ACounterLater=$(cat /job/svc/a/counter)"
  systemctl stop rebootless-counter-a.service
  echo "AAfterStop=$(systemctl show rebootless-counter-a.service -p ActiveState --value) $(services_copies a)"
}
