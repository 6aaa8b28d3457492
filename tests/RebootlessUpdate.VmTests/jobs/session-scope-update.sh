# Guest job for SessionScopeVmTests, run on each boot as systemd's job service (testbed/vm with
# rebootless.init=systemd: systemd is PID 1, with dbus and logind). Boot 1: user rb logs in through PAM (su -l, so
# pam_systemd has logind open a session: session-N.scope in user-1000.slice) and leaves a process tree behind in that
# session, as a job started from an ssh login and left running does: a shell loop that keeps a token and a counter in
# memory and writes them to a folder of the user's on the job share. The login ends; the tree runs on in the session's
# scope. `rebootless update --pid` checkpoints it and jumps through `systemctl kexec`. Boot 2 (the new kernel): the
# shipped resume unit restores it; the job writes what systemd and logind show to /job/after.txt, then stops the scope.
# The host test reads the files.
set -eu
. /job/lib.sh
# The scope (and slice) systemd holds the tree's root in, as KEY=VALUE lines prefixed with $1.
units() {
  cg=$(sed -n 's/^0:://p' "/proc/$2/cgroup" 2>/dev/null || true)
  echo "$1Cgroup=$cg"
  echo "$1Uid=$(awk '/^Uid:/ {print $2}' "/proc/$2/status" 2>/dev/null)"
  scope=$(basename "$cg")
  echo "$1Scope=$scope"
  systemctl show "$scope" -p LoadState -p ActiveState -p ControlGroup -p Slice | sed "s/^/$1Scope/"
  echo "$1Slice=$(systemctl show user-1000.slice -p ActiveState --value)"
  echo "$1Sessions=$(loginctl list-sessions --no-legend 2>&1 | awk '{print $1 ":" $3}' | tr '\n' ' ')"
}

if ! grep -q 'rebootless.resume=' /proc/cmdline; then
  uname -r >/job/kernel1
  useradd -m -u 1000 -s /bin/sh rb
  # A host's /etc and /home are on its disk: the tree's working folder (the user's home) is there after the jump.
  persist /etc/passwd /etc/group /etc/shadow /etc/gshadow /home/rb
  # logind answers once dbus has started it (both are socket or bus activated at boot).
  i=0; until loginctl list-sessions >/dev/null 2>&1 || [ $i -ge 300 ]; do sleep 0.1; i=$((i + 1)); done
  # The tree works in a folder of the user's on the job share (the host's folder, as it is at the freeze): a file it
  # holds open at the freeze (its c.tmp, mid-write) must be there at the restore, as on a host's disk. The copy of
  # /home/rb above is the one made at setup, without it.
  mkdir -p /job/rb && chown rb:rb /job/rb && chmod 0711 /job
  # The login: pam_systemd registers it with logind, which starts its scope and moves su there. What su starts in
  # the background stays in the scope when the login ends.
  su -l rb -c 'setsid sh -c '"'"'exec </dev/null >/dev/null 2>&1; cd /job/rb; echo $$ >pid; t=$(cat /proc/sys/kernel/random/uuid); i=0
    while :; do i=$((i+1)); /bin/echo "$t $i" >c.tmp; mv c.tmp counter; sleep 0.2; done'"'"' &' \
    >/job/su.log 2>&1 || echo "su exited $?" >>/job/su.log
  i=0; until [ -s /job/rb/counter ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
  sleep 1
  ls -la /job/rb >>/job/su.log 2>&1
  pid=$(cat /job/rb/pid)
  echo "$pid" >/job/pid
  install_resume_unit
  { echo "Pid=$pid"; units Before "$pid"; } >/job/before.txt
  cat /job/rb/counter >/job/counter-before
  new=$(cat /job/new-kernel)
  # Jumps: systemd stops this job like every service, so nothing below runs unless the update failed.
  tool update --pid "$pid" --kernel "/boot/vmlinuz-$new" --initrd "/boot/rebootless-initrd-$new.img" --append rebootless.boot=2 $STORE \
    >/job/update.log 2>&1 || echo "update exited $?" >>/job/update.log
  exit 11
fi

uname -r >/job/kernel2
wait_for_resume
pid=$(cat /job/pid)
{
  echo "Kernel=$(uname -r)"
  echo "Pid1=$(cat /proc/1/comm)"
  resume_state
  echo "Running=$([ -d "/proc/$pid" ] && echo yes || echo no)"
  units After "$pid"
  echo "Copies=$(pgrep -c -f 'while :; do i=' || true)"
  echo "Counter=$(cat /job/rb/counter)"
  sleep 2
  echo "CounterLater=$(cat /job/rb/counter)"
  echo "Failed=$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
  echo "System=$(systemctl is-system-running || true)"
  # A new login after the jump: logind numbers sessions afresh, and must not collide with the restored scope.
  echo "Login=$(su -l rb -c 'sed -n "s/^0:://p" /proc/self/cgroup' 2>&1 | tr '\n' ' ') exit $?"
  echo "LoginSessions=$(loginctl list-sessions --no-legend 2>&1 | awk '{print $1 ":" $3}' | tr '\n' ' ')"
  echo "LoginCopies=$(pgrep -c -f 'while :; do i=' || true) $(cat "/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$pid/cgroup")/cgroup.procs" 2>/dev/null | tr '\n' ' ')"
  # systemd holds the tree: stopping its scope ends it.
  scope=$(basename "$(sed -n 's/^0:://p' "/proc/$pid/cgroup" 2>/dev/null)")
  echo "StopScope=$(systemctl stop "$scope" 2>&1 && echo ok)"
  i=0; while [ -d "/proc/$pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  echo "AfterStop=$(systemctl show "$scope" -p ActiveState --value) $(pgrep -c -f 'while :; do i=' || true)"
} >/job/after.txt 2>&1
journalctl -b -u rebootless-resume.service --no-pager >/job/journal.log 2>&1 || true
cat /job/after.txt
