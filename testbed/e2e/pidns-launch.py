#!/usr/bin/env python3
"""pidns-launch PIDFILE LOG COMMAND...: the ExecStart of a workload service (Type=forking).

Starts COMMAND as the init of a new PID namespace, in its own session, stdin
/dev/null and its output to LOG, writes its pid (as this host sees it) to
PIDFILE, and returns. systemd then takes COMMAND as the unit's main process:
the unit's processes are one tree rooted at it, as `unshare --pid --fork`
starts the workloads under the small init, but without a parent left in the
unit (`rebootless update --service` checkpoints the tree under the main pid).
Its own PID namespace means the restored pids never collide with what the
new kernel's boot already started.
"""
import os
import sys


def main():
    pidfile, log, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.unshare(os.CLONE_NEWPID)
    pid = os.fork()  # the first child is PID 1 of the new namespace
    if pid == 0:
        try:
            os.setsid()
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.closerange(3, 256)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, pidfile)


if __name__ == "__main__":
    main()
