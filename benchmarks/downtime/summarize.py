#!/usr/bin/env python3
"""Turns the run-downtime job folders (WORK/ROW.I, one per run) into the markdown results page (stdout) and, with
--json FILE, the same numbers machine-readable: per row the medians (min-max) over its runs of the downtime, its
breakdown, the time until every page was back and the workloads' progress around the downtime; the bare jump and the
cold boot measured in the same run; and the aims of issue 16.

  summarize.py [--json FILE] [--command TEXT] WORK ROW...
"""
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys

args = sys.argv[1:]
opts = {}
while args and args[0] in ("--json", "--command"):
    opts[args[0]], args = args[1], args[2:]
work, names = args[0], args[1:]
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COMPONENTS = ["freezeAndDump", "seal", "sealToJump", "kexecAndBoot", "resumeStart", "guestBeforeTool", "toolStart",
              "stagesBeforeRestore", "restore"]


def jobs(row):
    """The row's job folders in run order (ROW.1, ROW.2, ...)."""
    found = glob.glob(f"{work}/{glob.escape(row)}.*[0-9]")
    return sorted((j for j in found if os.path.isdir(j)), key=lambda j: int(j.rsplit(".", 1)[1]))


def load(job):
    try:
        return json.load(open(f"{job}/result.json"))
    except (OSError, ValueError):
        return None


def stats(values):
    v = [x for x in values if x is not None]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)} if v else None


def med(values):
    s = stats(values)
    return s["median"] if s else None


def f(x):
    return "-" if x is None else f"{x:.1f}"


def spread(s):
    """median (min-max) for the markdown."""
    if s is None:
        return "-"
    return f"**{s['median']:.1f}**" + (f" ({s['min']:.1f}-{s['max']:.1f})" if s["runs"] > 1 else "")


def mode(x):
    return "lazy" if x.get("lazyRestore") is not None else "on-demand" if x.get("pagesFromStore") is not None else "full"


def all_back(x):
    """With pages from the store: seconds from the first freeze until every target held all of its memory."""
    served = x.get("pagesFromStore")
    if not served or x["breakdown"].get("downtime") is None:
        return None
    backs = [v["allMemoryBackAfterSeconds"] for v in served.values() if v.get("allMemoryBackAfterSeconds") is not None]
    return x["breakdown"]["downtime"] + max(backs) if len(backs) == len(served) else None


def git(*a):
    return subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True).stdout.strip()


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = int(open("/proc/meminfo").readline().split()[1]) // 1048576
qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
commit = git("rev-parse", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")

bare_runs = [x for x in map(load, jobs("bare")) if x]
bare = stats([x["kexecAndBoot"] for x in bare_runs])
floor = bare["median"] if bare else None
nc_runs = [x for x in map(load, jobs("bare-nc")) if x]
nc = stats([x["kexecAndBoot"] for x in nc_runs])
cold = []
for job in jobs("cold"):
    x = load(job)
    start = next((float(open(p).read()) for p in (f"{job}/vm-start", f"{job}/host-start") if os.path.exists(p)), None)
    if x and start:
        cold.append({"total": x["workloadsReadyAt"] - start, "kernelToInit": x["uptimeAtInit"], "workloads": x["workloadsStart"]})
cold_s = stats([c["total"] for c in cold])

rows = []
for name in names:
    if name in ("bare", "bare-nc", "cold"):
        continue
    runs = [(j, load(j)) for j in jobs(name)]
    done = [x for _, x in runs if x and x.get("breakdown")]
    passed = [x for x in done if x["verdict"] == "PASS"]
    row = {"name": name, "memory_mib": done[0]["memMiB"] if done else None, "mode": mode(done[0]) if done else None,
           "pre_dump": not name.endswith("-np"), "runs": len(runs), "passed": len(passed),
           "downtime_s": stats([x["breakdown"].get("downtime") for x in passed]),
           "all_memory_back_s": med([all_back(x) for x in passed]),
           "all_memory_back_range_s": stats([all_back(x) for x in passed]),
           "breakdown_s": {c: med([x["breakdown"].get(c) for x in passed]) for c in COMPONENTS},
           "images_mib": {"pre_dump": med([x["sizes"]["preDumpBytes"] / 1048576 for x in passed]),
                          "frozen": med([x["sizes"]["finalDumpBytes"] / 1048576 for x in passed])},
           "progress_first_10s": {}, "per_run_downtime_s": [x["breakdown"].get("downtime") if x else None for _, x in runs],
           "verdicts": [x["verdict"] if x else "no result" for _, x in runs], "set_ids": [x.get("setId") for x in done],
           "store": done[0].get("store", "pmem") if done else None, "kernels": done[0].get("kernels", "debian") if done else None,
           "reserved_at_boot_mib": done[0].get("reservedMiB") if done else None,
           "old_kernel_mem_total_mib": med([x.get("memTotalMiB") for x in passed]),
           "luo_receive_s": med([(x.get("luo") or {}).get("receiveSeconds") for x in passed])}
    workloads = sorted({w for x in passed for w in (x.get("progress") or {})})
    for w in workloads:
        p = [(x.get("progress") or {}).get(w) or {} for x in passed]
        row["progress_first_10s"][w] = {"before_per_s": med([q.get("beforePerSecond") for q in p]),
                                         "after_per_s": med([q.get("afterPerSecond") for q in p]),
                                         "ratio": med([q.get("ratio") for q in p])}
    d = row["downtime_s"]
    row["x_bare_jump"] = d["median"] / floor if d and floor else None
    rows.append(row)
by_name = {r["name"]: r for r in rows}


def ratio(a, b):
    ra, rb = by_name.get(a), by_name.get(b)
    if not ra or not rb or not ra["downtime_s"] or not rb["downtime_s"]:
        return None
    return ra["downtime_s"]["median"] / rb["downtime_s"]["median"]


tool_starts = [x["breakdown"]["toolStart"] for r in names if r not in ("bare", "bare-nc", "cold")
               for x in map(load, jobs(r)) if x and x.get("breakdown", {}).get("toolStart") is not None]
u256_store_x = by_name["u256-store"]["x_bare_jump"] if "u256-store" in by_name else None
aims = [
    {"aim": "downtime(1 GiB, on demand) <= 1.15 x downtime(64 MiB, on demand)", "value": ratio("u1024-store", "u64-store"), "limit": 1.15},
    {"aim": "downtime(256 MiB, on demand) <= 2.0 x the bare jump", "value": u256_store_x, "limit": 2.0},
    {"aim": "the tool's start on the new kernel under 0.5 s in the VM (median of every update run)", "value": med(tool_starts), "limit": 0.5},
]
for a in aims:
    a["met"] = None if a["value"] is None else a["value"] <= a["limit"]

print("# Downtime of a rebootless kernel update (testbed VM, qemu TCG)\n")
print(f"Machine: {os.cpu_count()} cores ({cpu}), {mem} GiB RAM, host kernel {platform.release()}, {qemu}; "
      "guest: 2 vCPUs under TCG (no KVM), Debian 6.12.117 -> 7.2.13, criu 4.1.1, store on legacy pmem (memmap=), "
      "the tool published NativeAOT.\n")
print(f"Date {date}, commit {commit}. Command: `sudo benchmarks/downtime/{opts.get('--command', 'run-downtime')}`. "
      "Every row ran that many times, in rounds (each round runs every row once), one VM at a time; "
      "numbers are medians (min-max) over the runs that passed.\n")
if bare:
    print(f"Bare jump (kexec -e to the new kernel's first userspace line, no workloads): {spread(bare)} s "
          f"(new kernel to init {f(med([x['newKernelBootToInit'] for x in bare_runs]))} s; kexec -l took "
          f"{f(med([x['load'] for x in bare_runs]))} s, before any freeze).\n")
if nc and bare:
    print(f"The same jump with kexec_load and kexec-tools' `--no-checks` (purgatory skips the SHA-256 of the loaded segments): "
          f"{spread(nc)} s ({nc['median'] / bare['median']:.2f}x the checked jump).\n")
if cold_s:
    print(f"Cold boot of the new kernel (qemu start -> workloads started from scratch, their state lost): {spread(cold_s)} s "
          f"(kernel to init {f(med([c['kernelToInit'] for c in cold]))} s, workloads {f(med([c['workloads'] for c in cold]))} s).\n")
print("Restore mode: full (CRIU copies every page before the targets run), lazy (criu lazy-pages daemons serve them from "
      "the images after), on-demand (`--pages-from-store`: rebootless's page server serves them from the store after the "
      "targets run, pre-dumped pages included, each 1 MiB checked first). Resume start is split as (guest job before the "
      "tool + the tool's start + Preflight, Locate and Verify). \"all back\" is from the first freeze until every target "
      "held all of its memory. \"progress\" is the memory workload's counter rate in the 10 s after its target ran again "
      "against 10 s before the update started (sampled every 0.5 s on the new kernel).\n")
print("| row | memory | pre-dump | mode | passed | downtime s | x bare jump | freeze+dump | seal | commit | kexec+boot | "
      "resume start | restore | all back s | progress | images MiB (pre / frozen) | store (kernels) | reserved at boot | old kernel's MemTotal |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    b = r["breakdown_s"]
    split = f" ({f(b['guestBeforeTool'])} + {f(b['toolStart'])} + {f(b['stagesBeforeRestore'])})" if b["toolStart"] is not None else ""
    prog = (r["progress_first_10s"].get("memory") or {}).get("ratio")
    print(f"| {r['name']} | {r['memory_mib'] or '-'} MiB | {'yes' if r['pre_dump'] else 'no'} | {r['mode'] or '-'} | "
          f"{r['passed']}/{r['runs']} | {spread(r['downtime_s'])} | {f(r['x_bare_jump'])} | {f(b['freezeAndDump'])} | "
          f"{f(b['seal'])} | {f(b['sealToJump'])} | {f(b['kexecAndBoot'])} | {f(b['resumeStart'])}{split} | {f(b['restore'])} | "
          f"{spread(r['all_memory_back_range_s'])} | {'-' if prog is None else f'{prog:.2f}x'} | "
          f"{f(r['images_mib']['pre_dump'])} / {f(r['images_mib']['frozen'])} | {r['store'] or '-'} ({r['kernels'] or '-'}"
          + (f"; received in {f(r['luo_receive_s'])} s" if r["luo_receive_s"] is not None else "") + ") | "
          f"{'-' if r['reserved_at_boot_mib'] is None else str(r['reserved_at_boot_mib']) + ' MiB'} | "
          f"{'-' if r['old_kernel_mem_total_mib'] is None else format(r['old_kernel_mem_total_mib'], '.0f') + ' MiB'} |")
print("\nEvery run's downtime (s), in run order: " + "; ".join(
    f"{r['name']} " + ", ".join(f(x) if v == "PASS" else f"{f(x)} ({v})" for x, v in zip(r["per_run_downtime_s"], r["verdicts"]))
    for r in rows) + ".")
print("\n## Aims (issue 16)\n")
for a in aims:
    state = "not measured" if a["met"] is None else "met" if a["met"] else "not met"
    value = "-" if a["value"] is None else f"{a['value']:.2f}"
    print(f"- {a['aim']}: {value} ({state})")
print("\nTimes across the jump come from the guest's wall clock, which the new kernel reads from the RTC (1 s resolution): +-1 s.")
if "--json" in opts:
    with open(opts["--json"], "w") as out:
        json.dump({"date": date, "commit": commit, "command": opts.get("--command"),
                   "machine": {"cores": os.cpu_count(), "cpu": cpu, "mem_gib": mem, "host_kernel": platform.release(), "qemu": qemu},
                   "bare_jump_s": bare, "bare_jump_no_checks_s": nc, "cold_boot_s": cold_s, "rows": rows, "aims": aims}, out, indent=2)
        out.write("\n")
