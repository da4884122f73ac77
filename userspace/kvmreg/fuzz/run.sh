#!/usr/bin/env bash
# Run every kvmreg fuzz target (or the ones named) for SECONDS each and
# print a table: target, executions, seconds, working corpus, crashes.
# Exits 1 if any target crashed (panic, timeout, out of memory), naming the
# artifact that reproduces it.
#
#   userspace/kvmreg/fuzz/run.sh SECONDS [TARGET...]
#   nice -n 19 userspace/kvmreg/fuzz/run.sh 120      # on a shared machine
#
# Needs rustup's nightly toolchain (installed if missing) and cargo-fuzz
# (installed with `cargo install --locked cargo-fuzz` if missing). Each
# target starts from the committed seeds in corpus/<target>/ and keeps what
# it finds in work/corpus/<target>/ (not committed); a crashing input lands
# in artifacts/<target>/. Logs: work/logs/<target>.log.
set -u

usage() {
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
secs=$1
shift
case $secs in '' | *[!0-9]*) usage ;; esac

cd "$(dirname "$0")" || exit 2
fuzz_dir=$(pwd)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "run.sh: no nightly toolchain; installing it with: rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal || exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz not found; installing it with: cargo install --locked cargo-fuzz"
    cargo install --locked cargo-fuzz || exit 2
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
[ ${#targets[@]} -gt 0 ] || {
    echo "run.sh: no fuzz targets found" >&2
    exit 2
}

echo "run.sh: building ${#targets[@]} targets"
cargo +nightly fuzz build || exit 2

mkdir -p work/logs
rows=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "work/corpus/$t" "corpus/$t"
    log="work/logs/$t.log"
    echo "run.sh: fuzzing $t for ${secs}s (log: $fuzz_dir/$log)"
    start=$(date +%s)
    # The first corpus directory receives new inputs; the seeds are read only.
    cargo +nightly fuzz run "$t" "work/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=30 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    end=$(date +%s)
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)
    if [ -n "$done_line" ]; then
        runs=$(echo "$done_line" | awk '{print $2}')
        took=$(echo "$done_line" | awk '{print $5}')
    else
        # A crash ends the run before libFuzzer's "Done" line.
        runs=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -n 1 | awk '{print $2}')
        runs=${runs:-?}
        took="$((end - start))(wall)"
    fi
    corpus_files=$(find "work/corpus/$t" -type f | wc -l)
    corpus_bytes=$(find "work/corpus/$t" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    # Slow units are reported but are not failures.
    mapfile -t found < <(grep -oE 'Test unit written to .*(crash|timeout|oom|leak)-[0-9a-f]+' "$log" |
        sed 's/^Test unit written to //')
    crashes=${#found[@]}
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="exit $rc"
    fi
    if [ "$rc" -ne 0 ] || [ ${#found[@]} -gt 0 ]; then
        failed=1
        echo "run.sh: $t FAILED (exit $rc); see $fuzz_dir/$log"
        for a in "${found[@]}"; do
            case $a in /*) ;; *) a="$fuzz_dir/$a" ;; esac
            echo "run.sh:   artifact: $a"
            echo "run.sh:   reproduce: cargo +nightly fuzz run $t $a"
        done
    fi
    rows+=("$(printf '%-14s %12s %9s %8s %10s %8s' "$t" "$runs" "$took" "$corpus_files" "$corpus_bytes" "$crashes")")
done

echo
printf '%-14s %12s %9s %8s %10s %8s\n' target executions seconds corpus bytes crashes
for r in "${rows[@]}"; do
    echo "$r"
done
exit $failed
