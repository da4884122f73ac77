#!/bin/sh
# VM create+destroy latency, patched vs base kernel, booted alternately:
# ROUNDS boots of each, the vm-lifecycle-bench payload in every boot
# (selftests/src/bin/vm_lifecycle_bench.rs). Prints each boot's median and
# the median ratio of the patched to the base boot over the pairs, with an
# interval. Usage: selftests/bench_lifecycle.sh [ROUNDS]   (default 8)
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
		m=$(sed -n 's/^# vm-lifecycle: median \([0-9.]*\) us.*/\1/p' "$dir/bench-lifecycle.log")
		[ -n "$m" ] || { echo "bench_lifecycle: no median in $dir/bench-lifecycle.log" >&2; exit 1; }
		echo "$m" >>"$out/$k"
		echo "round $i $k: median $m us per VM"
	done
	i=$((i + 1))
done
# Pair i is the i-th base boot and the i-th patched boot, run back to back
# in alternating order: the ratio is taken per pair, and summarised by its
# median with a distribution-free interval of at least 95% (order
# statistics k and n+1-k of the sorted ratios, k the largest with
# P(Binomial(n, 1/2) < k) <= 2.5%; fewer than 6 pairs give the range).
paste "$out/base" "$out/patched" | awk '
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
		printf "patched / base, per pair of boots: median %.3f, 95%% interval [%.3f, %.3f] (%d pairs)\n", med, r[k], r[n + 1 - k], n
		printf "goal <= 1.03: %s\n", (r[n + 1 - k] <= 1.03) ? "met (the interval says so)" : "not shown (the interval reaches past 1.03)"
	}'
