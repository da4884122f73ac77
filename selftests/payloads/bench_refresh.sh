#!/bin/sh
# Benchmark, not a test (`cargo xtask run bench-refresh`): the CPU time one
# refresh costs kvmtop in batch mode and the upstream kvm_stat tool in its
# logging mode, watching the same 100 fixture guests (one vCPU each, one
# process each, busy $BUSY% of the time, default 0: idle, the vCPU thread
# asleep. What a refresh costs the tools hardly depends on what the guests
# do, while 100 guests busy even 1% each left the two emulated CPUs of the
# test VM too loaded for kvm_stat to get going). Both run for about the same number of
# 1-second refreshes; CPU is user + system time from the kernel's rusage of
# the process (GNU time), divided by the refreshes each printed.
#
# $1: directory of the project's (release) binaries; $2: kvm_stat script.
echo "TAP version 13"
echo "1..3"
bin=$1
kvm_stat=$2
PATH=$bin:$PATH
. "$(dirname "$0")/tap.sh"

work=/tmp/bench-refresh
mkdir -p "$work"
cleanup() { kill $fixture 2>/dev/null; wait $fixture 2>/dev/null; }
trap cleanup EXIT
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug

names=$(seq -s, -f 'g%g' 1 100)
kvmreg-fixture --guests "$names" --vcpus 1 --busy "${BUSY:-0}" > "$work/fixture.out" &
fixture=$!
ready() { grep -qx ready "$work/fixture.out"; }
if wait_for 300 ready; then
	ok "100 fixture guests started"
else
	not_ok "100 fixture guests started within 300 s"
	exit 1
fi
sleep 2

refreshes=11
# %U %S: user and system seconds of the command (rusage, children included).
/usr/bin/time -f "%U %S" -o "$work/kvmtop.time" \
	kvmtop -b -n $refreshes -d 1 > "$work/kvmtop.out" 2> "$work/kvmtop.err"
frames=$(grep -c '^kvmtop - ' "$work/kvmtop.out")
if [ "$frames" -eq $refreshes ] &&
	grep -q "guests: 10[0-9]" "$work/kvmtop.out"; then
	ok "kvmtop printed $frames frames of the 100 guests"
else
	not_ok "kvmtop printed $frames frames of the 100 guests"
	sed 's/^/# /' "$work/kvmtop.err" | head -n 20
fi
# kvmtop's figure now, so that it is kept if kvm_stat never gets going.
awk -v kt="$(cat "$work/kvmtop.time")" -v kf="$frames" \
	-v wall="$(sed -n '1s/.*interval: \([0-9.]*\)s.*/\1/p' "$work/kvmtop.out")" 'BEGIN {
	split(kt, a, " "); k = (a[1] + a[2]) / kf;
	printf "# kvmtop alone: %.1f ms CPU per refresh (%.2f%% of a core at 1 Hz), first interval %ss\n", k * 1000, k * 100, wall;
}'

# kvm_stat's log mode (-l) prints a header, then one line per interval
# (-s 1); -d reads debugfs (this kernel has no tracefs). It runs until it
# has printed as many refreshes as kvmtop did or for $KVM_STAT_SECS
# (default 240) by the wall clock, then gets SIGINT (to kvm_stat itself:
# GNU time does not pass signals on), and SIGKILL 10 s later if it is
# still there (in the run on record it had not stopped 10 s after its
# SIGINT, its refreshes taking about 11 s each there). GNU time
# reports the rusage of a killed command too. Both tools' CPU includes
# their start.
: > "$work/kvm_stat.out"
/usr/bin/time -f "%U %S" -o "$work/kvm_stat.time" \
	python3 "$kvm_stat" -d -l -s 1 \
	> "$work/kvm_stat.out" 2> "$work/kvm_stat.err" &
timed=$!
started=$(date +%s)
deadline=$((started + ${KVM_STAT_SECS:-240}))
while [ "$(grep -c '^ *[0-9]' "$work/kvm_stat.out")" -lt $refreshes ] &&
	[ "$(date +%s)" -lt "$deadline" ]; do
	sleep 1
done
pkill -INT -P $timed
waited=0
while pgrep -P $timed > /dev/null && [ $waited -lt 10 ]; do
	sleep 1
	waited=$((waited + 1))
done
if pgrep -P $timed > /dev/null; then
	echo "# kvm_stat did not stop on SIGINT within 10 s: killed"
	pkill -KILL -P $timed
fi
wait $timed
echo "# kvm_stat ran $(($(date +%s) - started)) s"
lines=$(grep -c '^ *[0-9]' "$work/kvm_stat.out")
if [ "$lines" -ge 5 ]; then
	ok "kvm_stat printed $lines refreshes"
else
	not_ok "kvm_stat printed $lines refreshes"
	sed 's/^/# /' "$work/kvm_stat.err" | tail -n 20
fi
# The last line: GNU time puts "Command terminated by signal N" first.
tail -n 1 "$work/kvm_stat.time" > "$work/kvm_stat.cpu"

awk -v kt="$(cat "$work/kvmtop.time")" -v kf="$frames" \
	-v st="$(cat "$work/kvm_stat.cpu")" -v sf="$lines" 'BEGIN {
	split(kt, a, " "); split(st, b, " ");
	k = (a[1] + a[2]) / kf; s = sf > 0 ? (b[1] + b[2]) / sf : 0;
	printf "# kvmtop -b -d 1:   %.1f ms CPU per refresh (%.2f%% of a core at 1 Hz), %d refreshes\n", k * 1000, k * 100, kf;
	if (sf > 0)
		printf "# kvm_stat -d -l:   %.1f ms CPU per refresh (%.2f%% of a core at 1 Hz), %d refreshes\n", s * 1000, s * 100, sf;
	else
		printf "# kvm_stat -d -l:   %.1f s of CPU and no refresh printed\n", b[1] + b[2];
	if (k > 0 && sf > 0) printf "# kvm_stat / kvmtop: %.1fx (goal: >= 10x; kvmtop goal: <= 1%% of a core)\n", s / k;
}'
echo "# first kvmtop frame:"
sed -n '1,8p' "$work/kvmtop.out" | sed 's/^/#   /'
echo "# last kvm_stat lines:"
tail -n 3 "$work/kvm_stat.out" | cut -c1-150 | sed 's/^/#   /'
