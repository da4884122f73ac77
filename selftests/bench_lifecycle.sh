#!/bin/sh
# VM create+destroy cost, patched vs base kernel, booted alternately:
# ROUNDS boots of each, the vm-lifecycle-bench payload in every boot
# (selftests/src/bin/vm_lifecycle_bench.rs), which reports per VM the median
# wall time and the median CPU time of the creating and closing process.
# Prints each boot's figures and, for each, the median ratio of the patched
# to the base boot over the pairs, with an interval.
#
# Usage: selftests/bench_lifecycle.sh [ROUNDS]   (default 8)
# With KVMREG_ICOUNT=1 (Documentation/harness.md) the test VM's clock
# counts instructions, so that the figures do not depend on how busy the
# host is.
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-8}
cargo xtask kernel --base >/dev/null
cargo xtask kernel >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
i=1
while [ "$i" -le "$rounds" ]; do
	# Alternate which kernel boots first, so that a drift over the run
	# does not favour one.
	order="base patched"
	[ $((i % 2)) -eq 0 ] && order="patched base"
	for k in $order; do
		log=$(cargo xtask run -q --kernel "$k" bench-lifecycle 2>&1) || {
			printf '%s\n' "$log"
			echo "bench_lifecycle: the $k run failed" >&2
			exit 1
		}
		dir=$(printf '%s\n' "$log" | sed -n 's/^results: \(.*\)\/results.tap$/\1/p')
		f="$dir/bench-lifecycle.log"
		wall=$(sed -n 's/^# vm-lifecycle: median \([0-9.]*\) us.*/\1/p' "$f")
		cpu=$(sed -n 's/^# vm-lifecycle: median CPU \([0-9.]*\) us.*/\1/p' "$f")
		[ -n "$wall" ] && [ -n "$cpu" ] ||
			{ echo "bench_lifecycle: no medians in $f" >&2; exit 1; }
		echo "$wall" >>"$out/$k.wall"
		echo "$cpu" >>"$out/$k.cpu"
		echo "round $i $k: median $wall us wall, $cpu us CPU per VM"
	done
	i=$((i + 1))
done
# Pair i is the i-th base boot and the i-th patched boot, run back to back
# in alternating order: the ratio is taken per pair, and summarised by its
# median with a distribution-free interval of at least 95% (order
# statistics k and n+1-k of the sorted ratios, k the largest with
# P(Binomial(n, 1/2) < k) <= 2.5%; fewer than 6 pairs give the range).
for what in wall cpu; do
	paste "$out/base.$what" "$out/patched.$what" | awk -v what="$what" '
	{ r[NR] = $2 / $1 }
	END {
		n = NR
		for (i = 1; i <= n; i++)
			for (j = i + 1; j <= n; j++)
				if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
		med = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
		k = 1; c = 1; cdf = 0
		for (j = 0; j < n; j++) {
			cdf += c / 2 ^ n
			if (cdf > 0.025) break
			k = j + 1
			c = c * (n - j) / (j + 1)
		}
		printf "%s: patched / base, per pair of boots: median %.3f, 95%% interval [%.3f, %.3f] (%d pairs)\n", what, med, r[k], r[n + 1 - k], n
		printf "%s: goal <= 1.03: %s\n", what, (r[n + 1 - k] <= 1.03) ? "met (the interval says so)" : "not shown (the interval reaches past 1.03)"
	}'
done
