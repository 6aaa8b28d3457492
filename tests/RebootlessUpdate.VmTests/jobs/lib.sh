# What the guest jobs under systemd share (GuestTool.RunOnSystemd puts it in every job folder; a job sources
# /job/lib.sh): the store options, the tool, this guest's disk, and the shipped resume unit.
STORE="--pmem /dev/pmem0 --store-mount /run/rebootless/store --criu /usr/sbin/criu"
tool() { "$(cat /job/tool)" "$@"; }
# Files kept in /job/persist are this guest's disk: vm-init copies them into / on every boot.
persist() { for f in "$@"; do mkdir -p "/job/persist$(dirname "$f")"; cp -a "$f" "/job/persist$f"; done; }
# The shipped resume unit, installed and enabled by the tool with the store options above, and kept on the disk.
install_resume_unit() {
  printf 'REBOOTLESS_OPTIONS="%s"\n' "$STORE" >/etc/default/rebootless
  tool install-unit >/job/install-unit.log 2>&1
  persist /etc/default/rebootless /etc/systemd/system/rebootless-resume.service \
    /etc/systemd/system/multi-user.target.wants/rebootless-resume.service
}
# Boot 2: waits (up to 10 min) until the resume has ended, restored or failed; the unit lets the boot go on
# (READY=1) before it checks the adoptions and reports.
wait_for_resume() {
  i=0
  while [ "$(systemctl show rebootless-resume.service -p SubState --value)" != exited ] \
    && [ "$(systemctl show rebootless-resume.service -p ActiveState --value)" != failed ] && [ $i -lt 1200 ]; do
    sleep 0.5; i=$((i + 1))
  done
}
# How the resume unit ended, as ResumeActiveState=, ResumeResult= and ResumeExecMainStatus= lines.
resume_state() { systemctl show rebootless-resume.service -p ActiveState -p Result -p ExecMainStatus | sed 's/^/Resume/'; }
