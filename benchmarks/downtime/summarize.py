#!/usr/bin/env python3
"""Turns the run-downtime job folders into the markdown results page (stdout) and, with --json FILE, the same
numbers machine-readable: per row the breakdown, sizes, verdict and, with pages from the store, what was served."""
import json
import os
import platform
import subprocess
import sys

args = sys.argv[1:]
json_out = None
if args[:1] == ["--json"]:
    json_out, args = args[1], args[2:]
work, runs = args[0], args[1:]


def load(r):
    try:
        return json.load(open(f"{work}/{r}/result.json"))
    except (OSError, ValueError):
        return None


def f(x):
    return "-" if x is None else f"{x:.1f}"


def tool(b):
    """The resume start's split, when the run recorded it: guest job before the tool, tool start, stages before Restore."""
    return f" ({f(b['guestBeforeTool'])} + {f(b['toolStart'])} + {f(b['stagesBeforeRestore'])})" if "toolStart" in b else ""


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = int(open("/proc/meminfo").readline().split()[1]) // 1048576
qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
print("# Downtime of a rebootless kernel update (testbed VM, qemu TCG)\n")
print(f"Machine: {os.cpu_count()} cores ({cpu}), {mem} GiB RAM, host kernel {platform.release()}, {qemu}; "
      "guest: 2 vCPUs under TCG (no KVM), Debian 6.12.117 -> 7.2.13, criu 4.1.1, store on legacy pmem (memmap=).\n")
print("Reproduce: `sudo benchmarks/downtime/run-downtime` (each row is one `testbed/run-update` VM run).\n")
bare = load("bare")
floor = bare["kexecAndBoot"] if bare else None
if bare:
    print(f"Bare jump (kexec -e to the new kernel's first userspace line, no workloads): **{bare['kexecAndBoot']:.1f} s** "
          f"(new kernel to init {bare['newKernelBootToInit']:.1f} s; kexec -l took {bare['load']:.1f} s, before any freeze).\n")
print("Resume start is split as (guest job before the tool + the tool's start + Preflight, Locate and Verify).\n")
nc = load("bare-nc")
if nc and bare:
    print(f"The same jump with kexec_load and kexec-tools' `--no-checks` (purgatory skips the SHA-256 of the loaded segments): "
          f"**{nc['kexecAndBoot']:.1f} s** ({nc['kexecAndBoot'] / bare['kexecAndBoot']:.2f}x the checked jump; kexec -l {nc['load']:.1f} s).\n")
def mode(x):
    return "lazy" if x.get("lazyRestore") is not None else "from store" if x.get("pagesFromStore") is not None else "full"


def all_back(x):
    """With pages from the store: seconds from the first freeze until every target held all of its memory."""
    served = x.get("pagesFromStore")
    if not served or x["breakdown"].get("downtime") is None:
        return None
    backs = [v["allMemoryBackAfterSeconds"] for v in served.values() if v.get("allMemoryBackAfterSeconds") is not None]
    return x["breakdown"]["downtime"] + max(backs) if backs else None


print("Restore mode: full (CRIU copies every page before the targets run), lazy (criu lazy-pages daemons serve them "
      "from the images after), from store (rebootless's page server serves them from the store after, pre-dumped pages "
      "included, each 1 MiB checked first). \"all back\" is from the first freeze until every target held all of its memory.\n")
print("| run | memory | pre-dump | restore mode | downtime s | freeze+dump | seal | commit | kexec+boot | resume start | restore | x bare jump | all back s | images MiB (pre / frozen) | verdict |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
rows = {}
for r in runs:
    x = load(r)
    if r in ("bare", "bare-nc", "cold") or x is None:
        if x is None:
            print(f"| {r} | | | | | | | | | | | | | | no result |")
            rows[r] = None
        continue
    b, s = x["breakdown"], x["sizes"]
    ratio = b["downtime"] / floor if floor and b.get("downtime") else None
    print(f"| {r} | {x['memMiB']} MiB | {'no' if r.endswith('-np') else 'yes'} | {mode(x)} | **{f(b['downtime'])}** | {f(b['freezeAndDump'])} | {f(b['seal'])} | "
          f"{f(b['sealToJump'])} | {f(b['kexecAndBoot'])} | {f(b['resumeStart'])}{tool(b)} | {f(b['restore'])} | {f(ratio)} | {f(all_back(x))} | "
          f"{s['preDumpBytes'] / 1048576:.0f} / {s['finalDumpBytes'] / 1048576:.0f} | {x['verdict']} |")
    rows[r] = {"memMiB": x["memMiB"], "preDump": not r.endswith("-np"), "restoreMode": mode(x), "verdict": x["verdict"],
               "downtimeSeconds": b.get("downtime"), "xBareJump": ratio, "allMemoryBackSeconds": all_back(x),
               "breakdownSeconds": b, "sizes": s, "pagesFromStore": x.get("pagesFromStore"), "setId": x.get("setId")}
cold = load("cold")
cold_row = None
if cold:
    host = float(open(f"{work}/cold/host-start").read())
    total = cold["workloadsReadyAt"] - host
    cold_row = {"totalSeconds": total, "kernelToInitSeconds": cold["uptimeAtInit"], "workloadsStartSeconds": cold["workloadsStart"]}
    print(f"\nCold boot of the new kernel in the VM (qemu start -> workloads started from scratch, their state lost): "
          f"**{total:.1f} s** (kernel to init {cold['uptimeAtInit']:.1f} s, workloads {cold['workloadsStart']:.1f} s).")
if json_out:
    with open(json_out, "w") as out:
        json.dump({"machine": {"cores": os.cpu_count(), "cpu": cpu, "memGiB": mem, "hostKernel": platform.release(), "qemu": qemu},
                   "bareJumpSeconds": floor, "bareJumpNoChecksSeconds": nc["kexecAndBoot"] if nc else None,
                   "coldBoot": cold_row, "rows": rows}, out, indent=2)
        out.write("\n")
print("\nTimes across the jump come from the guest's wall clock, which the new kernel reads from the RTC (1 s resolution): +-1 s.")
