"""Workloads systemd holds in scopes, for the main job under systemd (testbed/run-update --init systemd).

- session: a tree a user left running in a login session. User rb logs in through PAM (su -l: pam_systemd has
  logind start session-N.scope in user-1000.slice) and leaves the pipes workload behind; the login ends and the tree
  runs on in the session's scope. After the jump logind numbers its sessions afresh, so the tree is handed back in
  rebootless-session-N.scope, and a new login must get a session of its own.
- container: a runc container (static busybox, its own namespaces, cgroup v2 through runc's systemd cgroup driver:
  systemd holds it in runc-rebootless-ctr.scope) that counts in memory and writes the count to a bind-mounted folder.
  After the jump runc must show it running as the restored init, and systemd hold it in its scope.

- podman: a container podman runs from an image imported from a rootfs tarball (no registry), counting in memory
  into a bind-mounted folder. Podman checkpoints and restores it itself; after the jump `podman ps` must show the
  same container id running, as the restored root, and `podman stop` must end it.

Each workload is a dict like guest.py's: name, dir (its counter), root, target, kind.
"""
import json
import os
import subprocess
import time

import systemd_host
from systemd_host import sh

USER, UID = "rb", 1000
CTR = "rebootless-ctr"
BUNDLE = "/job/ctr/bundle"
POD, POD_IMAGE = "rebootless-pod", "localhost/rebootless-busybox:1"
# The count lives in the shell's memory: a fresh start would begin at 1. It ends on SIGTERM (a PID namespace's init
# gets none it has no handler for). It waits with the shell's own read on a FIFO nobody writes, and writes with the
# shell's echo: it never forks, so its process tree is the same before and after.
def counter_sh(fifo):
    return (f"exec </dev/null >/dev/null 2>&1; trap 'exit 0' TERM; /bin/busybox mkfifo {fifo}; exec 3<>{fifo}; "
            "i=0; echo ok >/data/ready; while :; do i=$((i+1)); echo $i >/data/counter; read -t 0.2 x <&3; done")


def cgroup_of(pid):
    try:
        return next((l[3:].strip() for l in open(f"/proc/{pid}/cgroup") if l.startswith("0::")), "")
    except OSError:
        return ""


def scope_view(scope):
    """What systemd shows of a scope, with the processes in its cgroup."""
    s = systemd_host.show(scope, ("LoadState", "ActiveState", "SubState", "ControlGroup", "Slice"))
    return {"unit": scope, "LoadState": s.get("LoadState"), "ActiveState": s.get("ActiveState"),
            "SubState": s.get("SubState"), "Slice": s.get("Slice"), "ControlGroup": s.get("ControlGroup"),
            "processes": systemd_host.cgroup_procs(s.get("ControlGroup", ""))}


# ---- boot 1 ----------------------------------------------------------------

def start_session(wl, workloads_py):
    """User rb logs in, leaves the pipes workload running in the login's scope, and logs out."""
    code, out = sh(["useradd", "-m", "-u", str(UID), "-s", "/bin/sh", USER])
    if code != 0:
        raise SystemExit(f"useradd {USER}: {out}")
    # A host's /etc and /home are on its disk: the login's tree runs in the user's home, and must find it there again.
    systemd_host.persist("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", f"/home/{USER}")
    d = f"{wl}/session"
    os.makedirs(d, exist_ok=True)
    os.chown(d, UID, UID)
    # The job folder is the host's mktemp folder (0700): the user must reach its own folder in it.
    for p in ("/job", wl):
        os.chmod(p, 0o711)
    for _ in range(300):  # logind answers once dbus has started it
        if sh(["loginctl", "list-sessions"])[0] == 0:
            break
        time.sleep(0.1)
    inner = f"echo $$ >{d}/pid; exec /usr/bin/python3 {workloads_py} pipes {d}"
    code, out = sh(["su", "-l", USER, "-c", f"setsid sh -c '{inner}' </dev/null >{d}/out.log 2>&1 &"])
    if code != 0:
        raise SystemExit(f"su -l {USER}: exit {code}: {out}")
    for _ in range(200):
        try:
            root = int(open(f"{d}/pid").read())
            break
        except (OSError, ValueError):
            time.sleep(0.1)
    else:
        raise SystemExit(f"the session's workload wrote no pid: {open(d + '/out.log').read()}")
    return {"name": "session", "kind": "session", "dir": d, "root": root, "target": f"pid:{root}"}


def start_container(wl):
    """A runc container in runc-rebootless-ctr.scope, counting in memory into WL/container/counter."""
    d = f"{wl}/container"
    os.makedirs(f"{BUNDLE}/rootfs/bin", exist_ok=True)
    os.makedirs(f"{BUNDLE}/rootfs/data", exist_ok=True)
    os.makedirs(d, exist_ok=True)
    subprocess.run(["cp", "/job/busybox", f"{BUNDLE}/rootfs/bin/busybox"], check=True)
    code, out = sh(["runc", "spec", "--bundle", BUNDLE])
    if code != 0:
        raise SystemExit(f"runc spec: {out}")
    c = json.load(open(f"{BUNDLE}/config.json"))
    c["process"]["terminal"] = False
    c["process"]["args"] = ["/bin/busybox", "sh", "-c", counter_sh("/dev/shm/tick")]
    c["root"]["readonly"] = False
    c["mounts"].append({"destination": "/data", "type": "bind", "source": d, "options": ["rbind", "rw"]})
    c["linux"]["cgroupsPath"] = f"system.slice:runc:{CTR}"
    c["linux"].setdefault("resources", {})["memory"] = {"limit": 268435456}
    json.dump(c, open(f"{BUNDLE}/config.json", "w"))
    # (Bounded: once in the VM a start without --debug waited on systemd for minutes.)
    code, out = sh(["timeout", "120", "runc", "--debug", "--systemd-cgroup", "run", "-d", "--bundle", BUNDLE, CTR], timeout=130)
    if code != 0:
        raise SystemExit(f"runc run {CTR}: exit {code}: {out[-2000:]}")
    return {"name": "container", "kind": "container", "dir": d, "root": runc_pid(), "target": f"container:{CTR}"}


def start_podman(wl):
    """A podman container from a locally imported busybox image, counting in memory into WL/podman/counter."""
    d = f"{wl}/podman"
    os.makedirs(f"{d}/image/bin", exist_ok=True)
    os.makedirs(f"{d}/image/data", exist_ok=True)
    # Its FIFO lives in the image's /tmp: podman's /dev/shm is a host tmpfs bound in, which CRIU takes as external.
    os.makedirs(f"{d}/image/tmp", exist_ok=True)
    subprocess.run(["cp", "/job/busybox", f"{d}/image/bin/busybox"], check=True)
    # The guest's root is an overlay on tmpfs: podman's overlay driver cannot stack on it, vfs can. The storage is on
    # the host's disk (here /job/persist, copied in on every boot), the run root in /run as on any host.
    os.makedirs("/etc/containers", exist_ok=True)
    systemd_host.write("/etc/containers/storage.conf", '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\n'
                       'graphroot = "/var/lib/containers/storage"\n')
    for argv in (["tar", "-C", f"{d}/image", "-cf", f"{d}/image.tar", "."], ["podman", "import", "-q", f"{d}/image.tar", POD_IMAGE],
                 ["podman", "run", "-d", "--name", POD, "--network", "none", "-v", f"{d}:/data", POD_IMAGE,
                  "/bin/busybox", "sh", "-c", counter_sh("/tmp/tick")]):
        code, out = sh(argv, timeout=300)
        if code != 0:
            raise SystemExit(f"{' '.join(argv[:3])}: exit {code}: {out[-2000:]}")
    s = podman_state()
    if s.get("Status") != "running":
        raise SystemExit(f"podman run {POD}: {s}")
    return {"name": "podman", "kind": "podman", "dir": d, "root": s["Pid"], "target": f"podman:{POD}", "podmanId": s["Id"]}


def persist_podman():
    """Podman's storage and settings are on the host's disk: kept once its container runs (before the update)."""
    systemd_host.persist("/etc/containers", "/var/lib/containers")


def podman_state():
    r = subprocess.run(["podman", "container", "inspect", "--format", "json", POD], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    out = (r.stdout + r.stderr).strip()
    try:
        c = json.loads(r.stdout)[0] if r.returncode == 0 else {}
    except (ValueError, IndexError):
        c = {}
    st = c.get("State", {})
    return {"Id": c.get("Id"), "Status": st.get("Status", f"unknown: {out[-300:]}"), "Pid": st.get("Pid"),
            "Restored": st.get("Restored"), "ConmonPid": st.get("ConmonPid")}


def scope_of(cgroup):
    """The innermost systemd scope on a cgroup path (crun may run a container in a child of its scope's cgroup)."""
    return next((p for p in reversed(cgroup.split("/")) if p.endswith(".scope")), os.path.basename(cgroup))


def runc_state():
    code, out = sh(["runc", "state", CTR])
    try:
        return json.loads(out) if code == 0 else {"status": f"unknown: {out}"}
    except ValueError:
        return {"status": f"unknown: {out}"}


def runc_pid():
    return int(runc_state().get("pid") or 0)


def before(ws):
    """What systemd (and runc) show of each scoped workload before the update."""
    out = {}
    for w in ws:
        scope = scope_of(cgroup_of(w["root"]))
        w["scope"] = scope
        v = scope_view(scope)
        v["rootCgroup"] = cgroup_of(w["root"])
        if w["kind"] == "session":
            _, v["logind"] = sh(["loginctl", "list-sessions", "--no-legend"])
        elif w["kind"] == "podman":
            v["podman"] = podman_state()
            v["processes"] = systemd_host.cgroup_procs(v["rootCgroup"])  # crun's child cgroup of the scope's
        else:
            v["runc"] = {k: runc_state().get(k) for k in ("status", "pid")}
        out[w["name"]] = v
    return out


# ---- boot 2 ----------------------------------------------------------------

def check(ws, by_id, host_pids, checks):
    """Per scoped workload: systemd holds the restored tree in its scope, and only it; what each kind adds."""
    after = {}
    for w in ws:
        t = by_id[w["target"]]
        pid = t.get("restoredPid")
        tree = host_pids(pid) if pid else []
        cgroup = cgroup_of(pid) if pid else ""
        scope = f"rebootless-{w['scope']}" if w["kind"] == "session" else w["scope"]
        v = scope_view(scope)
        v["rootCgroup"] = cgroup
        after[w["name"]] = v
        # crun may put a podman container's processes in a child cgroup of its scope's.
        held = cgroup == v["ControlGroup"] or (w["kind"] == "podman" and cgroup.startswith(f"{v['ControlGroup']}/"))
        checks.append([v["ActiveState"] == "active" and held and scope_of(cgroup) == scope,
                       f"{w['name']}: systemd holds the restored root {pid} in {scope}: {v['LoadState']}, {v['ActiveState']}, "
                       f"cgroup {cgroup} (the scope's {v['ControlGroup']})"])
        if w["kind"] == "podman":
            v["processes"] = systemd_host.cgroup_procs(cgroup)
        checks.append([v["processes"] == tree and tree != [],
                       f"{w['name']}: {scope}'s cgroup holds the restored tree and nothing else (cgroup {v['processes']}, tree {tree})"])
        if w["kind"] == "session":
            check_session(w, pid, v, checks)
        elif w["kind"] == "podman":
            check_podman(w, pid, v, checks)
        else:
            check_container(pid, v, checks)
    return after


def check_session(w, pid, v, checks):
    try:
        uid = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("Uid:"))
    except (OSError, StopIteration):
        uid = None
    checks.append([uid == UID and v["Slice"] == f"user-{UID}.slice",
                   f"session: the restored tree runs as uid {uid} in {v['Slice']}"])
    # logind numbers its sessions afresh after the jump: a new login gets a session scope of its own.
    code, out = sh(["su", "-l", USER, "-c", "sed -n 's/^0:://p' /proc/self/cgroup"])
    v["newLogin"] = out
    checks.append([code == 0 and out.startswith(f"/user.slice/user-{UID}.slice/session-") and out.endswith(".scope")
                   and out != v["ControlGroup"],
                   f"session: a login after the jump gets a session scope of its own ({out or 'exit ' + str(code)}), "
                   f"apart from the restored tree's {v['ControlGroup']}"])
    # systemd holds the tree: stopping the scope ends it.
    tree = [p for p in v["processes"]]
    if not tree:
        checks.append([False, f"systemctl stop {v['unit']}: not tried, the scope holds no processes"])
        return
    code, out = systemd_host.systemctl("stop", v["unit"])
    for _ in range(100):
        if not any(os.path.exists(f"/proc/{p}") for p in tree):
            break
        time.sleep(0.1)
    left = [p for p in tree if os.path.exists(f"/proc/{p}")]
    state = scope_view(v["unit"])["ActiveState"]
    checks.append([code == 0 and state == "inactive" and tree and not left,
                   f"systemctl stop {v['unit']}: exit {code}, {state}; of its {len(tree)} restored processes {len(left)} left {out}".strip()])


def check_container(pid, v, checks):
    s = runc_state()
    v["runc"] = {k: s.get(k) for k in ("status", "pid")}
    checks.append([s.get("status") == "running" and s.get("pid") == pid,
                   f"container: runc state says {s.get('status')}, init pid {s.get('pid')} (the restored root {pid})"])
    code, out = sh(["runc", "exec", CTR, "/bin/busybox", "cat", "/data/counter"])
    checks.append([code == 0 and out.isdigit(), f"container: runc exec enters it (it reads its counter: {out})"])


def check_podman(w, pid, v, checks):
    s = podman_state()
    v["podman"] = s
    checks.append([s["Id"] == w["podmanId"] and s["Status"] == "running" and s["Pid"] == pid and s["Restored"] is True,
                   f"podman: container {POD} is {s['Status']} with the same id ({(s['Id'] or '?')[:12]}, was {w['podmanId'][:12]}), "
                   f"init pid {s['Pid']} (the restored root {pid}), restored={s['Restored']}"])
    # One copy: only the restored root runs the container's counting shell on this host.
    copies = [p for p in os.listdir("/proc") if p.isdigit() and "/tmp/tick" in cmdline(p)]
    checks.append([copies == [str(pid)], f"podman: one copy of its workload runs on the host (pids {copies})"])
    code, out = sh(["podman", "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Status}}"], timeout=120)
    v["ps"] = out
    checks.append([code == 0 and any(l.startswith(f"{w['podmanId']} {POD} Up") for l in out.splitlines()),
                   f"podman: podman ps lists it up under its id: {out or 'exit ' + str(code)}"])
    # Podman supervises it again: its stop ends the restored tree (the shell exits on TERM).
    code, out = sh(["podman", "stop", "-t", "10", POD], timeout=120)
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.1)
    after = podman_state()
    checks.append([code == 0 and not os.path.exists(f"/proc/{pid}") and after["Status"] == "exited",
                   f"podman: podman stop {POD}: exit {code}, now {after['Status']}, restored root {pid} "
                   f"{'gone' if not os.path.exists(f'/proc/{pid}') else 'still running'} {out if code else ''}".strip()])


def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
