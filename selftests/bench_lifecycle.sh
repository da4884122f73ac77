#!/bin/sh
# VM create+destroy latency, patched vs base kernel, booted alternately:
# ROUNDS boots of each, the vm-lifecycle-bench payload in every boot
# (selftests/src/bin/vm_lifecycle_bench.rs). Prints each boot's median and
# the ratio of the medians of the patched and the base boots.
# Usage: selftests/bench_lifecycle.sh [ROUNDS]   (default 3)
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo xtask kernel --base >/dev/null
cargo xtask kernel >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
i=1
while [ "$i" -le "$rounds" ]; do
	for k in base patched; do
		log=$(cargo xtask run -q --kernel "$k" bench-lifecycle 2>&1) || {
			printf '%s\n' "$log"
			echo "bench_lifecycle: the $k run failed" >&2
			exit 1
		}
		dir=$(printf '%s\n' "$log" | sed -n 's/^results: \(.*\)\/results.tap$/\1/p')
		m=$(sed -n 's/^# vm-lifecycle: median \([0-9.]*\) us.*/\1/p' "$dir/bench-lifecycle.log")
		[ -n "$m" ] || { echo "bench_lifecycle: no median in $dir/bench-lifecycle.log" >&2; exit 1; }
		echo "$m" >>"$out/$k"
		echo "round $i $k: median $m us per VM"
	done
	i=$((i + 1))
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
b=$(median "$out/base")
p=$(median "$out/patched")
echo "base: $b us, patched: $p us (medians of $rounds boots each)"
awk -v b="$b" -v p="$p" 'BEGIN { printf "patched / base = %.3f (goal: <= 1.03)\n", p / b }'
