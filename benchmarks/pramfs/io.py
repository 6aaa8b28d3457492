#!/usr/bin/env python3
"""Sequential write or read of one file in large blocks, timed; one JSON line on stdout.

  io.py write PATH MIB [BLOCK_KIB]   writes MIB MiB in BLOCK_KIB KiB writes (default 1024), fsync, close
  io.py read PATH [BLOCK_KIB]        reads the file to its end, checks every block's number

The buffer is page-aligned (as CRIU's page images are): FUSE direct I/O, which pramfs
uses for write-only files, sends an unaligned 1 MiB buffer as two requests (257 pages).
Each block is the same random buffer with the block's number in its first 8 bytes,
so the reader proves it read what the writer wrote (in order, nothing lost). The
time runs from open to after fsync + close (write) or to EOF + close (read).
"""
import json
import mmap
import os
import struct
import sys
import time


def write(path, mib, block_kib):
    block = block_kib * 1024
    total = mib * 1024 * 1024
    buf = mmap.mmap(-1, block)
    buf[:] = os.urandom(block)
    view = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    n = 0
    while done < total:
        struct.pack_into("<Q", buf, 0, n)
        off = 0
        while off < block:
            off += os.write(fd, view[off:])
        done += block
        n += 1
    t1 = time.perf_counter()
    os.fsync(fd)
    os.close(fd)
    t2 = time.perf_counter()
    return {"op": "write", "bytes": done, "seconds": t2 - t0, "fsync_seconds": t2 - t1}


def read(path, block_kib):
    block = block_kib * 1024
    buf = mmap.mmap(-1, block)
    view = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    done = 0
    n = 0
    while True:
        got = 0
        while got < block:
            k = os.readv(fd, [view[got:]])
            if k == 0:
                break
            got += k
        if got == 0:
            break
        if got < 8 or struct.unpack_from("<Q", buf, 0)[0] != n:
            raise SystemExit(f"io.py: {path}: block {n} is not the one written (read {got} bytes)")
        done += got
        n += 1
        if got < block:
            break
    os.close(fd)
    t1 = time.perf_counter()
    return {"op": "read", "bytes": done, "seconds": t1 - t0}


def main(argv):
    if len(argv) >= 4 and argv[1] == "write":
        r = write(argv[2], int(argv[3]), int(argv[4]) if len(argv) > 4 else 1024)
    elif len(argv) >= 3 and argv[1] == "read":
        r = read(argv[2], int(argv[3]) if len(argv) > 3 else 1024)
    else:
        raise SystemExit(__doc__)
    r["mib_s"] = r["bytes"] / r["seconds"] / (1024 * 1024)
    print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv)
