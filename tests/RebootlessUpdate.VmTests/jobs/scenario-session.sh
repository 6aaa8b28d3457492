# Scenario of systemd-host-update.sh for SessionScopeVmTests: user rb logs in through PAM (su -l, so pam_systemd has
# logind open a session: session-N.scope in user-1000.slice) and leaves a process tree behind in that session, as a
# job started from an ssh login and left running does: a shell loop that keeps a token and a counter in memory and
# writes them to a folder of the user's on the job share. The login ends; the tree runs on in the session's scope.
# `rebootless update --pid` checkpoints it. On the new kernel the checks look at what systemd and logind show, log in
# again, then stop the scope. Files: /job/session. The loop's own marker (`while :; do n=`) tells it from the others'.
# The scope (and slice) systemd holds the tree's root in, as KEY=VALUE lines prefixed with $1.
session_units() {
  cg=$(sed -n 's/^0:://p' "/proc/$2/cgroup" 2>/dev/null || true)
  echo "$1Cgroup=$cg"
  echo "$1Uid=$(awk '/^Uid:/ {print $2}' "/proc/$2/status" 2>/dev/null)"
  scope=$(basename "$cg")
  echo "$1Scope=$scope"
  systemctl show "$scope" -p LoadState -p ActiveState -p ControlGroup -p Slice | sed "s/^/$1Scope/"
  echo "$1Slice=$(systemctl show user-1000.slice -p ActiveState --value)"
  echo "$1Sessions=$(loginctl list-sessions --no-legend 2>&1 | awk '{print $1 ":" $3}' | tr '\n' ' ')"
}
session_copies() { pgrep -c -f 'while :; do n=' || true; }

session_setup() {
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
  su -l rb -c 'setsid sh -c '"'"'exec </dev/null >/dev/null 2>&1; cd /job/rb; echo $$ >pid; t=$(cat /proc/sys/kernel/random/uuid); n=0
    while :; do n=$((n+1)); /bin/echo "$t $n" >c.tmp; mv c.tmp counter; sleep 0.2; done'"'"' &' \
    >/job/session/su.log 2>&1 || echo "su exited $?" >>/job/session/su.log
  i=0; until [ -s /job/rb/counter ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
  sleep 1
  ls -la /job/rb >>/job/session/su.log 2>&1
  pid=$(cat /job/rb/pid)
  echo "$pid" >/job/session/pid
  { echo "Pid=$pid"; session_units Before "$pid"; } >/job/session/before.txt
  cat /job/rb/counter >/job/session/counter-before
}

session_targets() { echo "--pid $(cat /job/session/pid)"; }

session_after() {
  pid=$(cat /job/session/pid)
  echo "Running=$([ -d "/proc/$pid" ] && echo yes || echo no)"
  session_units After "$pid"
  echo "Copies=$(session_copies)"
  echo "Counter=$(cat /job/rb/counter)"
  sleep 2
  echo "CounterLater=$(cat /job/rb/counter)"
  # A new login after the jump: logind numbers sessions afresh, and must not collide with the restored scope.
  echo "Login=$(su -l rb -c 'sed -n "s/^0:://p" /proc/self/cgroup' 2>&1 | tr '\n' ' ') exit $?"
  echo "LoginSessions=$(loginctl list-sessions --no-legend 2>&1 | awk '{print $1 ":" $3}' | tr '\n' ' ')"
  echo "LoginCopies=$(session_copies) $(cat "/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$pid/cgroup")/cgroup.procs" 2>/dev/null | tr '\n' ' ')"
  # systemd holds the tree: stopping its scope ends it.
  scope=$(basename "$(sed -n 's/^0:://p' "/proc/$pid/cgroup" 2>/dev/null)")
  echo "StopScope=$(systemctl stop "$scope" 2>&1 && echo ok)"
  i=0; while [ -d "/proc/$pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  echo "AfterStop=$(systemctl show "$scope" -p ActiveState --value) $(session_copies)"
}
