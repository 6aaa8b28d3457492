#!/usr/bin/env bash
# Runs the libFuzzer target for a bounded time: the corpus starts from a valid
# seed image (fuzz_region --write-seed) plus every input in fuzz-regressions/.
# Usage: fuzz_libfuzzer.sh FUZZER SEED_WRITER SECONDS
set -euo pipefail
fuzzer=$1 seeder=$2 seconds=$3
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -x "$fuzzer" ]; then
  echo "fuzz_libfuzzer: $fuzzer was not built: clang with libFuzzer (clang-14, libclang-rt-14-dev) is missing; testbed/provision installs them" >&2
  exit 1
fi
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
seed=$(mktemp)
"$seeder" --write-seed "$seed" >/dev/null
{ printf '\001'; cat "$seed"; } >"$corpus/seed-resealed"
{ printf '\003'; cat "$seed"; } >"$corpus/seed-resealed-repair"
rm -f "$seed"
find "$here/fuzz-regressions" -type f ! -name README.md -exec cp {} "$corpus/" \;
"$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1100000 -print_final_stats=1 "$corpus" 2>&1 |
  grep -E "^(INFO: (Seed|Running with|Loaded)|#[0-9]+ +(INITED|DONE)|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY)" || true
status=${PIPESTATUS[0]}
echo "fuzz_libfuzzer: corpus size $(ls "$corpus" | wc -l) inputs, $(du -sh "$corpus" | cut -f1) after ${seconds}s; exit $status"
exit "$status"
