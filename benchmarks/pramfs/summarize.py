#!/usr/bin/env python3
"""Markdown table of fs-bench.sh's measurements: median MiB/s per file system and
operation, and the median of the per-repetition ratios to tmpfs (side by side).

  summarize.py WORKDIR COMMAND     reads WORKDIR/{machine.txt,host.jsonl,vm.jsonl}
"""
import json
import os
import statistics
import sys


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(rows, title):
    if not rows:
        return []
    targets = list(dict.fromkeys(r["target"] for r in rows))
    by = {}
    for r in rows:
        by.setdefault((r["target"], r["op"]), {})[r["rep"]] = r["mib_s"]
    lines = [f"### {title}", "",
             "| file system | write MiB/s (median; min-max) | read MiB/s (median; min-max) | write vs tmpfs | read vs tmpfs |",
             "|---|---|---|---|---|"]
    for t in targets:
        cells = [t]
        for op in ("write", "read"):
            v = list(by.get((t, op), {}).values())
            cells.append(f"{statistics.median(v):.0f}; {min(v):.0f}-{max(v):.0f}" if v else "-")
        for op in ("write", "read"):
            mine, base = by.get((t, op), {}), by.get(("tmpfs", op), {})
            ratios = [mine[k] / base[k] for k in mine if k in base and base[k] > 0]
            cells.append(f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})" if ratios and t != "tmpfs" else "1")
        lines.append("| " + " | ".join(cells) + " |")
    reps = max(r["rep"] for r in rows)
    lines += ["", f"{reps} repetitions; ratios are per repetition (the file systems ran one after the other within it), then the median (min-max).", ""]
    return lines


def main(work, command):
    machine = open(os.path.join(work, "machine.txt")).read().strip().splitlines()
    out = ["# PramFS throughput vs tmpfs (and ext4 with DAX)", "", "Command: `" + command + "`", ""]
    out += [f"- {m}" for m in machine] + [""]
    out += table(load(os.path.join(work, "host.jsonl")), "Host: pramfs on a file-backed region in /dev/shm vs tmpfs")
    out += table(load(os.path.join(work, "vm.jsonl")), "VM: the same pmem region (/dev/pmem0) for ext4 -o dax and pramfs; tmpfs in guest RAM")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
