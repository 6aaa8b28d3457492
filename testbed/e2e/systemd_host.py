"""The systemd side of the main job (testbed/run-update --init systemd, systemd is PID 1).

Boot 1: each workload is an enabled service with Restart=always (pidns-launch.py makes it the init of its own
PID namespace and the unit's main process), the shipped resume unit is installed with `rebootless install-unit`,
and what a host keeps on its disk (units, /etc/default/rebootless, fstab) is copied to /job/persist, which
testbed/vm-init puts back on every boot. `rebootless update --service ...` then jumps through `systemctl kexec`.
Boot 2: the resume unit restores the services before multi-user.target; a harness unit ordered before it keeps
the counters as the new kernel found them and samples them from then on. The checks: each unit is active again
with the restored root as its main pid, in its own cgroup, holding that tree and nothing else, never restarted;
`systemctl stop` ends a restored service; nothing failed; the system is running.
"""
import os
import shutil
import stat
import subprocess
import time

JOB = "/job"
UNITS = "/etc/systemd/system"
WANTS = f"{UNITS}/multi-user.target.wants"
RESUME_UNIT = "rebootless-resume.service"
SAMPLE_UNIT = "rebootless-testsample.service"
TOOL_MOUNT = "/opt/rebootless"


def unit_of(name):
    return f"rebootless-wl-{name}.service"


def sh(argv, timeout=120):
    """Runs a command without input: its exit code and its output (stdout and stderr), stripped."""
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).strip()


def systemctl(*args, timeout=120):
    return sh(["systemctl", *args], timeout=timeout)


SERVICE_PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "ControlGroup", "ExecMainStatus",
                      "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic")


def show(unit, properties=SERVICE_PROPERTIES):
    """What systemd shows of a unit (a service's properties unless others are named), as a dict."""
    _, out = systemctl("show", unit, *(a for p in properties for a in ("-p", p)))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def cgroup_procs(control_group):
    """The pids in a unit's cgroup; none for a unit without one (not the root cgroup's)."""
    if not control_group:
        return []
    try:
        return sorted(int(p) for p in open(f"/sys/fs/cgroup{control_group}/cgroup.procs").read().split())
    except (OSError, ValueError):
        return []


def view(unit):
    """The unit as systemd shows it, with its main pid's cgroup and the processes in the unit's cgroup."""
    s = show(unit)
    main = int(s.get("MainPID") or 0)
    try:
        cgroup = open(f"/proc/{main}/cgroup").read().strip() if main else ""
    except OSError:
        cgroup = "(gone)"
    return {"unit": unit, "ActiveState": s.get("ActiveState"), "SubState": s.get("SubState"), "MainPID": main,
            "NRestarts": s.get("NRestarts"), "Result": s.get("Result"), "mainPidCgroup": cgroup,
            "ControlGroup": s.get("ControlGroup"), "processes": cgroup_procs(s.get("ControlGroup", ""))}


def persist(*paths):
    """Copies files, links and folders to /job/persist: this guest's disk, which testbed/vm-init copies into / on every boot."""
    for p in paths:
        dest = f"{JOB}/persist{p}"
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.isdir(p) and not os.path.islink(p):
            copy_folder(p, dest)
            continue
        copy_entry(p, dest)


def copy_folder(src, dest):
    """Like cp -a, for what a disk keeps across a boot: folders, files and links with their owners (a user's home stays
    theirs). Not sockets, FIFOs or devices, which the 9p job share cannot hold and whose owners make them anew after a
    boot (podman's container folders hold its attach socket and control FIFOs), nor what is mounted below src (a
    container's /dev/shm): its mount point stays, empty, as on a disk."""
    device = os.lstat(src).st_dev
    for root, dirs, files in os.walk(src):
        target = os.path.normpath(os.path.join(dest, os.path.relpath(root, src)))
        copy_mode(root, target)
        walk = []
        for d in dirs:
            path = os.path.join(root, d)
            if os.path.islink(path):
                files.append(d)
            elif os.lstat(path).st_dev == device:
                walk.append(d)
            else:
                copy_mode(path, os.path.join(target, d))
        dirs[:] = walk
        for f in files:
            path = os.path.join(root, f)
            if stat.S_ISREG(os.lstat(path).st_mode) or os.path.islink(path):
                copy_entry(path, os.path.join(target, f))


def copy_mode(src, dest):
    """A folder like src (mode and owner), without its contents."""
    os.makedirs(dest, exist_ok=True)
    st = os.lstat(src)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
    os.lchown(dest, st.st_uid, st.st_gid)


def copy_entry(src, dest):
    """A file or link, with its mode, times and owner."""
    if os.path.lexists(dest):
        os.unlink(dest)
    shutil.copy2(src, dest, follow_symlinks=False)
    st = os.lstat(src)
    os.lchown(dest, st.st_uid, st.st_gid)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def start_services(specs):
    """specs: [(name, folder, argv)]. Writes, enables and starts one service per workload; returns their main pids
    once systemd has them (Type=forking: the launcher has written the PID file and exited)."""
    launch = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pidns-launch.py")
    units = []
    for name, folder, argv in specs:
        unit = unit_of(name)
        write(f"{UNITS}/{unit}", f"""[Unit]
Description=rebootless testbed workload {name}

[Service]
Type=forking
PIDFile=/run/{unit}.pid
ExecStart=/usr/bin/python3 {launch} /run/{unit}.pid {folder}/out.log {' '.join(argv)}
# Marks: the jump's shutdown must run neither against the checkpointed (already ended) service.
ExecStop=/bin/sh -c 'echo stop >>{folder}/stop-actions'
ExecStopPost=/bin/sh -c 'echo stop-post >>{folder}/stop-actions'
WorkingDirectory={folder}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
""")
        units.append(unit)
    systemctl("daemon-reload")
    code, out = systemctl("enable", "--now", *units)
    if code != 0:
        raise SystemExit(f"systemctl enable --now {' '.join(units)}: exit {code}: {out}")
    persist(*[f"{UNITS}/{u}" for u in units], *[f"{WANTS}/{u}" for u in units])
    pids = {}
    for unit in units:
        for _ in range(200):
            pid = int(show(unit).get("MainPID") or 0)
            if pid:
                pids[unit] = pid
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"{unit} has no main pid: {view(unit)}")
    return pids


def prepare_resume(tool, options, sampler):
    """The shipped resume unit, as a host installs it, with the options it needs here; the tool's disk in fstab
    (the unit runs before the job, which mounted it on boot 1); and the harness's unit before the resume."""
    write("/etc/default/rebootless", f'REBOOTLESS_OPTIONS="{" ".join(options)}"\n')
    with open("/etc/fstab", "a") as f:
        f.write(f"/dev/vda {TOOL_MOUNT} ext4 ro 0 0\n")
    write(f"{UNITS}/{SAMPLE_UNIT}", f"""[Unit]
Description=rebootless testbed: the counters as the new kernel found them, then sampled every half second
DefaultDependencies=no
After=local-fs.target
Before={RESUME_UNIT}
ConditionKernelCommandLine=rebootless.resume

[Service]
Type=exec
ExecStartPre=/bin/sh -c 'for d in {JOB}/wl/*/; do cat "$$d/counter" >"$$d/counter.at-boot" 2>/dev/null; done'
ExecStart=/bin/bash {sampler} {JOB}/counter-samples.2

[Install]
WantedBy=multi-user.target
""")
    systemctl("daemon-reload")
    code, out = systemctl("enable", SAMPLE_UNIT)
    if code != 0:
        raise SystemExit(f"systemctl enable {SAMPLE_UNIT}: {out}")
    r = subprocess.run([tool, "install-unit"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"rebootless install-unit: exit {r.returncode}: {r.stdout}{r.stderr}")
    persist("/etc/default/rebootless", "/etc/fstab", f"{UNITS}/{SAMPLE_UNIT}", f"{WANTS}/{SAMPLE_UNIT}",
            f"{UNITS}/{RESUME_UNIT}", f"{WANTS}/{RESUME_UNIT}")
    # The update writes the resume unit's order before the services into rebootless-resume.service.d, on the host's
    # disk: here that is /job/persist.
    order = f"{UNITS}/{RESUME_UNIT}.d"
    os.makedirs(f"{JOB}/persist{order}", exist_ok=True)
    os.symlink(f"{JOB}/persist{order}", order)
    return r.stdout.strip()


def uptime_of_pid1():
    ticks = int(open("/proc/1/stat").read().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def resume_outcome(deadline):
    """Waits for the resume unit to end (after READY=1 it checks the adoptions, then exits). Returns what systemd
    shows of it, its exit status, its output (the journal), and its start (wall clock and uptime) and end."""
    end = deadline
    while show(RESUME_UNIT).get("SubState") in ("running", "start", "start-pre") and time.time() < end:
        time.sleep(0.5)
    s = show(RESUME_UNIT)
    now, up = time.time(), float(open("/proc/uptime").read().split()[0])
    started_uptime = int(s.get("ExecMainStartTimestampMonotonic") or 0) / 1e6
    ended_uptime = int(s.get("ExecMainExitTimestampMonotonic") or 0) / 1e6 or up
    out = subprocess.run(["journalctl", "-b", "-u", RESUME_UNIT, "-o", "cat", "--no-pager"], capture_output=True, text=True).stdout
    return {"ActiveState": s.get("ActiveState"), "SubState": s.get("SubState"), "Result": s.get("Result"),
            "exitStatus": int(s.get("ExecMainStatus") or -1) if s.get("SubState") != "running" else -1,
            "startedAt": now - (up - started_uptime), "startedUptime": started_uptime, "endedAt": now - (up - ended_uptime), "output": out}


def keep_logs():
    """This boot's journal and where systemd spent the time until the resume unit, to the job folder."""
    with open(f"{JOB}/journal.log", "w") as f:
        subprocess.run(["journalctl", "-b", "-o", "short-monotonic", "--no-pager"], stdout=f, stderr=subprocess.STDOUT)
    with open(f"{JOB}/boot-chain.txt", "w") as f:
        for args in (["critical-chain", RESUME_UNIT], ["blame"]):
            subprocess.run(["systemd-analyze", "--no-pager", *args], stdout=f, stderr=subprocess.STDOUT, timeout=60)


def check_units(ws, by_id, host_pids, checks):
    """Per restored workload: what systemd shows of its unit is the restored tree, and only it."""
    after = {}
    for w in ws:
        t, unit = by_id[w["target"]], w["unit"]
        v = view(unit)
        after[unit] = v
        pid = t.get("restoredPid")
        tree = host_pids(pid) if pid else []
        checks.append([v["ActiveState"] == "active" and v["MainPID"] == pid,
                       f"{unit}: {v['ActiveState']} ({v['SubState']}), MainPID {v['MainPID']} = the restored root {pid}"])
        checks.append([v["mainPidCgroup"].endswith(f"/system.slice/{unit}"),
                       f"{unit}: the restored root is in the unit's own cgroup ({v['mainPidCgroup']})"])
        checks.append([v["processes"] == tree and tree != [],
                       f"{unit}: its cgroup holds the restored tree and nothing else (cgroup {v['processes']}, tree {tree})"])
        checks.append([v["NRestarts"] == "0", f"{unit}: not restarted by its Restart=always since the boot (NRestarts {v['NRestarts']})"])
    return after


def stop_actions(w):
    try:
        return open(f"{w['dir']}/stop-actions").read().split()
    except FileNotFoundError:
        return []


def check_no_stop_actions(ws, checks):
    """The jump's shutdown ran no ExecStop= or ExecStopPost= of a checkpointed service (CRIU had ended its tree)."""
    for w in ws:
        ran = stop_actions(w)
        checks.append([ran == [], f"{w['unit']}: no stop action ran across the jump" + (f" (ran: {' '.join(ran)})" if ran else "")])


def check_stop(w, host_pids, checks):
    """systemctl stop of a restored service ends its restored processes, through its own stop actions again."""
    pid = int(show(w["unit"]).get("MainPID") or 0)
    tree = host_pids(pid) if pid else []
    code, out = systemctl("stop", w["unit"])
    left = [p for p in tree if os.path.exists(f"/proc/{p}")]
    state = show(w["unit"]).get("ActiveState")
    ran = stop_actions(w)
    checks.append([code == 0 and state == "inactive" and bool(tree) and not left and ran == ["stop", "stop-post"],
                   f"systemctl stop {w['unit']}: exit {code}, {state}; of its {len(tree)} restored processes {len(left)} left; "
                   f"stop actions run: {' '.join(ran) or 'none'} {out}".strip()])


def check_system(checks):
    _, failed = systemctl("--failed", "--no-legend", "--plain")
    checks.append([failed == "", "systemctl --failed lists nothing" + (f": {failed}" if failed else "")])
    state = ""
    for _ in range(60):  # the boot's last jobs (the harness's own) may still be finishing
        _, state = systemctl("is-system-running")
        if state != "starting":
            break
        time.sleep(1)
    checks.append([state == "running", f"systemctl is-system-running: {state}"])
