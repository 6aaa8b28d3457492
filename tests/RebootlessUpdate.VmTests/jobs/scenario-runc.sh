# Scenario of systemd-host-update.sh for RuncContainerVmTests: a runc container (static busybox, its own namespaces,
# cgroup v2 through runc's systemd cgroup driver, so systemd holds it in runc-rebootless-ctr.scope) keeps a counter in
# memory and writes it to a bind-mounted folder; `rebootless update --container` checkpoints it. On the new kernel the
# checks look at what runc and systemd show, then stop the container through its scope and delete it through runc.
# Files: /job/runc. The loop's own marker (`while :; do k=`) tells it from the others'.
RUNC_ID=rebootless-ctr
# What runc says of the container, as KEY=VALUE lines: its status and init pid (or what runc said).
runc_state() {
  if runc state "$RUNC_ID" >/tmp/runc-state.json 2>&1; then
    python3 -c 'import json, sys
s = json.load(open("/tmp/runc-state.json"))
print(sys.argv[1] + "Status=" + s["status"])
print(sys.argv[1] + "Pid=" + str(s["pid"]))' "$1"
  else
    echo "$1Status=unknown: $(tr '\n' ' ' </tmp/runc-state.json)"
  fi
}
runc_scope() { systemctl show "runc-$RUNC_ID.scope" -p LoadState -p ActiveState -p ControlGroup | sed "s/^/Scope/"; }
# The scope's limits as systemd and the cgroup show them (the device rules sorted: systemd lists them newest first),
# and whether its device filter holds: runc allows mknod of any char device, but opening one outside its allow-list
# is refused (/dev/kmsg, 1:11, opened write-only so that no rule but the device filter applies), while one on it opens
# (/dev/null, 1:3). The nodes are made in the container's /dev, a tmpfs: a device node on the 9p job share (the
# bundle's rootfs) makes qemu drop the share.
runc_limits() {
  cg=/sys/fs/cgroup/system.slice/runc-$RUNC_ID.scope
  echo "Limits=$(systemctl show "runc-$RUNC_ID.scope" -p MemoryMax -p TasksMax -p CPUWeight -p CPUQuotaPerSecUSec -p CPUQuotaPeriodUSec -p DevicePolicy | sort | tr '\n' ' ')"
  echo "DeviceAllow=$(systemctl show "runc-$RUNC_ID.scope" -p DeviceAllow | sort | tr '\n' '|')"
  echo "CgroupFiles=memory.max:$(cat $cg/memory.max) pids.max:$(cat $cg/pids.max) cpu.max:$(cat $cg/cpu.max) cpu.weight:$(cat $cg/cpu.weight)"
  for dev in "Kmsg 1 11" "Null 1 3"; do
    set -- $dev
    echo "$1=$(runc exec --cap CAP_MKNOD "$RUNC_ID" /bin/busybox sh -c "/bin/busybox rm -f /dev/probe; /bin/busybox mknod /dev/probe c $2 $3 || exit 0
      if /bin/busybox true 2>/dev/null >/dev/probe; then echo opened; else echo refused; fi; /bin/busybox rm -f /dev/probe" 2>&1 | tr '\n' ' ')"
  done
}

runc_setup() {
  # The bundle lives on the job share: the guest's own root is a tmpfs overlay that the jump loses.
  b=/job/ctr/bundle
  mkdir -p $b/rootfs/bin $b/rootfs/data /job/ctr/data
  cp /job/busybox $b/rootfs/bin/busybox
  (cd $b && runc spec)
  python3 - $b/config.json <<'PY'
import json, sys
path = sys.argv[1]
c = json.load(open(path))
c["process"]["terminal"] = False
# A token drawn at start and a count, both in memory only: a fresh start shows a new token and begins at 1.
# It ends on SIGTERM (a PID namespace's init gets none it has no handler for), so a stop needs no SIGKILL.
c["process"]["args"] = ["/bin/busybox", "sh", "-c",
    "exec </dev/null >/dev/null 2>&1; trap 'exit 0' TERM; t=$(/bin/busybox cat /proc/sys/kernel/random/uuid); k=0; "
    "while :; do k=$((k+1)); echo \"$t $k\" >/data/c.tmp; /bin/busybox mv /data/c.tmp /data/counter; /bin/busybox sleep 0.2; done"]
c["root"]["readonly"] = False
c["mounts"].append({"destination": "/data", "type": "bind", "source": "/job/ctr/data", "options": ["rbind", "rw"]})
c["linux"]["cgroupsPath"] = "system.slice:runc:rebootless-ctr"
# Limits runc gives systemd as the scope's properties (with runc's default device rules): they must hold after the jump.
c["linux"].setdefault("resources", {})
c["linux"]["resources"]["memory"] = {"limit": 268435456}
c["linux"]["resources"]["pids"] = {"limit": 64}
c["linux"]["resources"]["cpu"] = {"quota": 50000, "period": 100000, "shares": 512}
json.dump(c, open(path, "w"))
PY
  # (Bounded: once in the VM a start without --debug waited on systemd for minutes.)
  timeout 120 runc --debug --systemd-cgroup run -d --bundle $b "$RUNC_ID" >/job/runc/runc-run.log 2>&1
  i=0; until [ -s /job/ctr/data/counter ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
  sleep 1
  { runc_state Ctr; runc_scope; runc_limits
    echo "CtrCgroup=$(cat "/proc/$(runc state "$RUNC_ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')/cgroup")"; } >/job/runc/before.txt
  cat /job/ctr/data/counter >/job/runc/counter-before
  # What the tool's readiness check says here: as the testbed runs it (CRIU_FAULT=130 from vm-init), and without that
  # setting, when its breakpoint probe runs (TCG fires them).
  tool check --json $STORE >/job/runc/check.json 2>/job/runc/check.err || true
  env -u CRIU_FAULT "$(cat /job/tool)" check --json $STORE >/job/runc/check-probe.json 2>/job/runc/check-probe.err || true
}

runc_targets() { echo "--container $RUNC_ID"; }

runc_after() {
  runc_state Ctr
  pid=$(runc state "$RUNC_ID" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])' || echo 0)
  echo "CtrCgroup=$(cat "/proc/$pid/cgroup" 2>/dev/null)"
  echo "CtrCopies=$(pgrep -c -f 'while :; do k=' || true)"
  runc_scope
  echo "CtrCounter=$(cat /job/ctr/data/counter)"
  runc_limits
  echo "CtrExec=$(runc exec "$RUNC_ID" /bin/busybox cat /data/counter 2>&1 | tr '\n' ' ')"
  sleep 2
  echo "CtrCounterLater=$(cat /job/ctr/data/counter)"
  # systemd holds the tree: stopping the scope ends it. Then runc sees it stopped and its delete forgets it.
  echo "StopScope=$(systemctl stop "runc-$RUNC_ID.scope" 2>&1 && echo ok)"
  i=0; while [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  echo "AfterStop=$(systemctl show "runc-$RUNC_ID.scope" -p ActiveState --value) $(pgrep -c -f 'while :; do k=' || true)"
  runc_state AfterStop
  echo "Delete=$(runc delete "$RUNC_ID" 2>&1 && echo ok)"
  echo "AfterDelete=$(runc state "$RUNC_ID" >/dev/null 2>&1 && echo known || echo unknown)"
}
