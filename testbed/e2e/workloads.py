#!/usr/bin/env python3
"""Stateful workloads for the end-to-end update (run inside the testbed VM).

    workloads.py pipes DIR   three processes joined by pipes: a generator, a
                             doubler and a sink that writes DIR/counter
    workloads.py tcp DIR     a TCP server and a connected client on 127.0.0.1,
                             exchanging numbered messages; both check the
                             sequence, DIR/counter holds the last echoed
                             number, DIR/errors gets any reset or gap
    workloads.py perf DIR    holds a perf event fd (CRIU cannot dump those)

Each mode is the init of its own PID namespace (started under unshare
--pid --fork): its children never fork again, so the process tree is the
same before the update and after the restore. Writes go through rename.
"""
import ctypes
import os
import signal
import socket
import sys
import time


def put(d, name, text):
    tmp = os.path.join(d, "." + name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(d, name))


def error(d, text):
    with open(os.path.join(d, "errors"), "a") as f:
        f.write(f"{time.time():.3f} {text}\n")


def spawn(fn, *args):
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        finally:
            os._exit(1)
    return pid


def wait_forever():
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


def pipes(d):
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()

    def generator():
        os.close(a_r); os.close(b_r); os.close(b_w)
        out = os.fdopen(a_w, "w", buffering=1)
        n = 0
        while True:
            n += 1
            out.write(f"{n}\n")
            time.sleep(0.05)

    def doubler():
        os.close(a_w); os.close(b_r)
        src = os.fdopen(a_r, "r")
        out = os.fdopen(b_w, "w", buffering=1)
        for line in src:
            out.write(f"{int(line) * 2}\n")

    def sink():
        # Drains what the pipe holds before each write of the counter, so the counter trails the generator by at most
        # one write's time even when writes are slow (a busy guest): a count that jumps ahead after a restore is then
        # a fault, not a backlog.
        os.close(a_r); os.close(a_w); os.close(b_w)
        last, rest = 0, b""
        while chunk := os.read(b_r, 1 << 16):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                n = int(line) // 2
                if n != last + 1:
                    error(d, f"pipe gap: {last} then {n}")
                last = n
            if lines:
                put(d, "counter", f"{last}\n")

    spawn(generator)
    spawn(doubler)
    spawn(sink)
    os.close(a_r); os.close(a_w); os.close(b_r); os.close(b_w)
    put(d, "ready", "ok\n")
    wait_forever()


def tcp(d):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def server():
        conn, _ = listener.accept()
        listener.close()  # only the established connection remains
        f = conn.makefile("rwb", buffering=0)
        expected = 1
        try:
            for line in f:
                n = int(line)
                if n != expected:
                    error(d, f"server: expected message {expected}, got {n}")
                expected = n + 1
                conn.sendall(line)
        except OSError as e:
            error(d, f"server: {e!r}")
        error(d, f"server: connection closed after message {expected - 1}")

    def client():
        listener.close()
        conn = socket.create_connection(("127.0.0.1", port))
        f = conn.makefile("rb", buffering=0)
        n = 0
        try:
            while True:
                n += 1
                conn.sendall(f"{n}\n".encode())
                echo = f.readline()
                if not echo:
                    error(d, f"client: connection closed at message {n}")
                    return
                if int(echo) != n:
                    error(d, f"client: sent {n}, echo {int(echo)}")
                put(d, "counter", f"{n}\n")
                time.sleep(0.05)
        except OSError as e:
            error(d, f"client: {e!r} at message {n}")

    spawn(server)
    spawn(client)
    listener.close()
    put(d, "ready", f"port {port}\n")
    wait_forever()


class PerfEventAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("rest", ctypes.c_uint8 * 64)]


def perf(d):
    libc = ctypes.CDLL(None, use_errno=True)
    attr = PerfEventAttr(type=1, size=112, config=0)  # PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK
    fd = libc.syscall(298, ctypes.byref(attr), 0, -1, -1, 0)  # perf_event_open(attr, this process, any cpu)
    if fd < 0:
        error(d, f"perf_event_open failed: errno {ctypes.get_errno()}")
        sys.exit(1)
    n = 0
    put(d, "ready", f"perf fd {fd}\n")
    while True:
        n += 1
        put(d, "counter", f"{n}\n")
        time.sleep(0.05)


if __name__ == "__main__":
    # As a service's main process (testbed/run-update --init systemd) each mode is the init of its PID namespace,
    # which gets no SIGTERM it has no handler for: `systemctl stop` would wait out TimeoutStopSec. Forked children
    # inherit the handler; CRIU restores it.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    mode, directory = sys.argv[1], sys.argv[2]
    {"pipes": pipes, "tcp": tcp, "perf": perf}[mode](directory)
