"""A TCP server and a client on loopback exchanging numbered messages.

    python3 tcp-pair.py DIR PORT

The server (this process) accepts one connection and echoes every line; the
client (a forked child) sends 1, 2, 3, ... and checks each echo. The client
writes the last confirmed number to DIR/tcp-counter and appends any error
(reset, wrong echo, EOF) to DIR/tcp-errors, so a test can prove that an
established connection survived a checkpoint with no message lost.
"""
import os
import socket
import sys
import time

directory, port = sys.argv[1], int(sys.argv[2])


def put(name, text):
    tmp = os.path.join(directory, "." + name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(directory, name))


def error(text):
    with open(os.path.join(directory, "tcp-errors"), "a") as f:
        f.write(text + "\n")


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(1)

if os.fork() == 0:
    listener.close()
    conn = socket.create_connection(("127.0.0.1", port))
    reader = conn.makefile("r")
    n = 0
    while True:
        n += 1
        try:
            conn.sendall(b"%d\n" % n)
            line = reader.readline()
        except OSError as e:
            error("client: %r after %d" % (e, n - 1))
            sys.exit(1)
        if line.strip() != str(n):
            error("client: sent %d, got %r" % (n, line))
            sys.exit(1)
        put("tcp-counter", "%d\n" % n)
        time.sleep(0.05)

conn, _ = listener.accept()
reader = conn.makefile("r")
while True:
    line = reader.readline()
    if not line:
        error("server: EOF")
        sys.exit(1)
    conn.sendall(line.encode())
