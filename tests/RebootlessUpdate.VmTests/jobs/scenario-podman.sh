# Scenario of systemd-host-update.sh for PodmanVmTests: two podman containers from a locally imported busybox image
# (no registry), each drawing a token at start and counting in memory into a bind-mounted folder; podman's storage is
# kept on this guest's disk (/job/persist); `rebootless update --podman a --podman b` has podman checkpoint both. On the
# new kernel, before the resume unit, an attacker's unit starts container a afresh through podman (a new token, from
# 1); the resume must then restore b only, under its id, and never a second copy of a. The checks stop b through
# podman. Files: /job/podman.
IMAGE=localhost/rebootless-busybox:1
# What podman says of a container, as KEY=VALUE lines: its id, status, init pid and whether it was restored.
podman_show() {
  podman container inspect --format "$2Id={{.Id}}
$2Status={{.State.Status}}
$2Pid={{.State.Pid}}
$2Restored={{.State.Restored}}
$2Cgroup={{.State.CgroupPath}}" "$1" 2>&1 || echo "$2Status=unknown"
}
podman_copies() { pgrep -c -f "/data-$1/counter" || true; }

podman_setup() {
  mkdir -p /etc/containers /tmp/image/bin /tmp/image/tmp /job/data-a /job/data-b
  # The guest's root is an overlay on tmpfs: podman's overlay driver cannot stack on it, vfs can.
  printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' >/etc/containers/storage.conf
  cp /job/busybox /tmp/image/bin/busybox
  tar -C /tmp/image -cf /tmp/image.tar .
  podman import -q /tmp/image.tar $IMAGE >/job/podman/podman.log 2>&1
  for c in a b; do
    # A token drawn at start and a count, in memory only: a fresh start shows a new token and begins at 1. It waits
    # with the shell's own read on a FIFO in its /tmp, so its tree is one process before and after.
    podman run -d --name "$c" --network none -v "/job/data-$c:/data-$c" $IMAGE /bin/busybox sh -c \
      "exec </dev/null >/dev/null 2>&1; trap 'exit 0' TERM; t=\$(/bin/busybox cat /proc/sys/kernel/random/uuid); /bin/busybox mkfifo /tmp/tick; exec 3<>/tmp/tick; i=0; while :; do i=\$((i+1)); echo \"\$t \$i\" >/data-$c/counter; read -t 0.2 x <&3; done" \
      >>/job/podman/podman.log 2>&1
  done
  # The attacker's unit: on the new kernel, before the resume, podman starts container a afresh (cgroupfs: the
  # system bus is not up that early) and leaves it running (the unit stays active, so systemd keeps its conmon).
  cat >/etc/systemd/system/rebootless-attack.service <<'UNIT'
[Unit]
ConditionKernelCommandLine=rebootless.resume
DefaultDependencies=no
After=local-fs.target
Before=rebootless-resume.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/podman --cgroup-manager cgroupfs start a
ExecStartPost=/usr/bin/podman ps --no-trunc
StandardOutput=append:/job/podman/attack.log
StandardError=append:/job/podman/attack.log
[Install]
WantedBy=multi-user.target
UNIT
  systemctl enable rebootless-attack.service >/dev/null 2>&1
  persist /etc/systemd/system/rebootless-attack.service /etc/systemd/system/multi-user.target.wants/rebootless-attack.service
  i=0; until [ -s /job/data-a/counter ] && [ -s /job/data-b/counter ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i + 1)); done
  sleep 1
  { podman_show a A; podman_show b B; } >/job/podman/before.txt
  cat /job/data-a/counter >/job/podman/counter-a-before
  cat /job/data-b/counter >/job/podman/counter-b-before
  # Podman's storage is on the host's disk: kept (without its sockets and FIFOs, which podman makes anew).
  python3 -c 'import sys; sys.path.insert(0, "/repo/testbed/e2e"); import systemd_host; systemd_host.persist(*sys.argv[1:])' \
    /etc/containers /var/lib/containers
}

podman_targets() { echo "--podman a --podman b"; }

podman_after() {
  podman_show a A
  podman_show b B
  echo "ACopies=$(podman_copies a)"
  echo "BCopies=$(podman_copies b)"
  echo "ACounter=$(cat /job/data-a/counter)"
  echo "BCounter=$(cat /job/data-b/counter)"
  sleep 2
  echo "BCounterLater=$(cat /job/data-b/counter)"
  echo "Ps=$(podman ps --no-trunc --format '{{.ID}} {{.Names}} {{.Status}}' | tr '\n' '|')"
  pid=$(podman container inspect --format '{{.State.Pid}}' b 2>/dev/null || echo 0)
  echo "StopB=$(podman stop -t 10 b 2>&1 | tr '\n' ' ')"
  i=0; while [ -d "/proc/$pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  echo "AfterStopBStatus=$(podman container inspect --format '{{.State.Status}}' b 2>&1)"
  echo "AfterStopBCopies=$(podman_copies b)"
}
