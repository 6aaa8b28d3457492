#!/usr/bin/env python3
"""Times the two publishes of the tool side by side (see run-tool-start) and writes the markdown report."""
import argparse
import datetime
import glob
import os
import platform
import statistics
import subprocess
import time

p = argparse.ArgumentParser()
for name in ("--criu", "--work", "--out", "--r2r", "--aot", "--dotnet"):
    p.add_argument(name, required=True)
p.add_argument("--runs", type=int, default=20)
p.add_argument("--where", default="on the host")
a = p.parse_args()

dotnet_root = os.path.dirname(a.dotnet)
# The ReadyToRun publish is framework-dependent: its apphost finds the runtime through DOTNET_ROOT, as an installed tool does.
env = dict(os.environ, DOTNET_ROOT=dotnet_root, DOTNET_CLI_TELEMETRY_OPTOUT="1", DOTNET_NOLOGO="1")
env.pop("REBOOTLESS_STORE", None)
env.pop("REBOOTLESS_CONFIG", None)
# ReadyToRun twice: through its apphost (as the installed tool runs) and as `dotnet rebootless.dll` (as the VM ran it).
tools = {"ReadyToRun": [f"{a.r2r}/rebootless"], "ReadyToRun (dotnet dll)": [a.dotnet, f"{a.r2r}/rebootless.dll"],
         "NativeAOT": [f"{a.aot}/rebootless"]}
stores = {}
for name in tools:
    stores[name] = f"{a.work}/store-{len(stores)}"
    os.makedirs(stores[name], exist_ok=True)


def commands(name):
    return {
        "--version": ["--version"],
        "status --json --store EMPTY": ["status", "--json", "--store", stores[name]],
        "resume --json --store EMPTY --criu CRIU": ["resume", "--json", "--store", stores[name], "--criu", a.criu],
    }


def once(argv):
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=a.work)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode()}")
    return wall


times = {(name, c): [] for name in tools for c in commands(name)}
# The first `resume` of each publish: where its files are not yet in the page cache (in the VM, just after boot,
# as the real resume), that is a cold start. criu is read first, so that neither pays for it. Then the warm-up.
subprocess.run([a.criu, "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
first = {name: once([*tools[name], *commands(name)["resume --json --store EMPTY --criu CRIU"]]) for name in ("NativeAOT", "ReadyToRun")}
for name, tool in tools.items():
    for argv in commands(name).values():
        once([*tool, *argv])
for _ in range(a.runs):
    for c in commands("ReadyToRun"):
        for name, tool in tools.items():
            times[(name, c)].append(once([*tool, *commands(name)[c]]))


def size(paths):
    return sum(os.path.getsize(f) for f in paths)


def needed(folder):
    # What runs: not the symbols (.pdb, .dbg) nor the documentation (.xml).
    return [f for f in glob.glob(f"{folder}/*") if os.path.isfile(f) and not f.endswith((".pdb", ".dbg", ".xml"))]


fx = max(glob.glob(f"{dotnet_root}/shared/Microsoft.NETCore.App/*/"),
         key=lambda d: [int(x) if x.isdigit() else -1 for x in os.path.basename(d.rstrip("/")).replace("-", ".").split(".")])
runtime = size(f for f in glob.glob(f"{fx}**", recursive=True) if os.path.isfile(f))
mib = lambda n: f"{n / 1048576:.1f} MiB"
ms = lambda s: f"{s * 1000:.0f}"

lines = [
    f"## Start of the `rebootless` tool {a.where}: ReadyToRun vs NativeAOT ({datetime.date.today().isoformat()})",
    "",
    f"Machine: {os.cpu_count()} cores, {platform.machine()}, kernel {platform.release()}, "
    f"load average at the start {os.getloadavg()[0]:.1f} (shared with other work); runtime {os.path.basename(fx.rstrip('/'))}.",
    "",
    f"Each command {a.runs} times per publish, alternating between them. Wall time from fork to exit, in ms.",
    "",
    "| command | " + " | ".join(f"{name} median" for name in tools) + " | " + " | ".join(f"{name} min-max" for name in tools)
    + " | NativeAOT vs ReadyToRun |",
    "|---" * (2 * len(tools) + 2) + "|",
]
for c in commands("ReadyToRun"):
    t = {name: times[(name, c)] for name in tools}
    lines.append(f"| `{c}` | " + " | ".join(f"**{ms(statistics.median(v))}**" for v in t.values()) + " | "
                 + " | ".join(f"{ms(min(v))}-{ms(max(v))}" for v in t.values())
                 + f" | {statistics.median(t['ReadyToRun']) / statistics.median(t['NativeAOT']):.1f}x faster |")
r2r_files, aot_files = needed(a.r2r), needed(a.aot)
lines += [
    "",
    f"First `resume` of each (before the warm-up; cold where its files were not yet read): ReadyToRun {ms(first['ReadyToRun'])}, "
    f"NativeAOT {ms(first['NativeAOT'])}.",
    "",
    "Sizes (what runs; no symbols or documentation):",
    "",
    f"- ReadyToRun: {mib(size(r2r_files))} in {len(r2r_files)} files, plus the shared .NET runtime it needs "
    f"({mib(runtime)}, Microsoft.NETCore.App)",
    f"- NativeAOT: {mib(size(aot_files))} in {len(aot_files)} files: "
    + ", ".join(f"{os.path.basename(f)} {mib(os.path.getsize(f))}" for f in sorted(aot_files))
    + "; no runtime needed",
    "",
]
with open(a.out, "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines))
