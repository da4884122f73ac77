#!/bin/sh
# Benchmark, not a test (`KVMREG_MEMORY=6G cargo xtask run bench-refresh`):
# what watching costs. kvmreg-refresh-bench (userspace/kvmreg-fixture)
# starts fixture guests shaped like qemu (90 extra fds and 8 extra threads
# per VMM process, one process and one vCPU per guest) and measures, in
# interleaved rounds, kvmtop -b's CPU per refresh beside its floor (a
# poller that only preads the same files), the interval it keeps, its
# system calls per guest and refresh (strace -f -c), the listing of
# .list against the fd scan, and the exits kvmtop adds to running guests.
# Three runs: 100 idle guests (15 rounds, and the exits), 100 guests busy
# 1%, 1,000 idle guests (the test VM needs about 6 GiB for them: KVMREG_MEMORY).
#
# $1: directory of the project's (release) binaries; $2 "exits": the
# exits measurement alone (`cargo xtask run bench-exits`, e.g. with
# KVMREG_CPUS=4); $2 "floor": the refresh against its floor alone, with
# more rounds, at 100 busy and 1,000 idle guests (`KVMREG_MEMORY=6G
# cargo xtask run bench-floor`; 100 idle guests were decided at 25 rounds).
bin=$1
echo "TAP version 13"
if [ "$2" = exits ]; then
	echo "1..1"
elif [ "$2" = floor ]; then
	echo "1..2"
else
	echo "1..3"
fi
PATH=$bin:$PATH
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug

n=0
bench() {
	what=$1
	shift
	n=$((n + 1))
	echo "# $what: kvmreg-refresh-bench $*"
	if kvmreg-refresh-bench --require-strace "$@"; then
		echo "ok $n - $what"
	else
		echo "not ok $n - $what"
	fi
}

if [ "$2" = exits ]; then
	bench "the exits kvmtop adds ($(nproc) CPUs)" \
		--exits-only --exits-guests 3 --exits-busy 50
	exit 0
fi
if [ "$2" = floor ]; then
	bench "100 guests busy 1%, 25 rounds" --guests 100 --busy 1 --rounds 25
	bench "1000 idle guests, 11 rounds" --guests 1000 --busy 0 --rounds 11 \
		--refreshes 6
	exit 0
fi
bench "100 idle guests, and the exits kvmtop adds" \
	--guests 100 --busy 0 --rounds 15 --exits-guests 3 --exits-busy 50
bench "100 guests busy 1%" --guests 100 --busy 1 --rounds 7
bench "1000 idle guests" --guests 1000 --busy 0 --rounds 5 --refreshes 6 \
	--list-rounds 7
