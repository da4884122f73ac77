#!/bin/sh
# The `trace-exits` suite (debug kernel, which has event tracing; an
# investigation, not a test): where the interrupt exits of guests that a
# kvmtop profile does not sample come from. Three fixture guests busy 50%
# (ex1, ex2, ex3); per round a traced window without a tool, then one with
# `kvmtop profile -g ex1` running. Events: kvm_exit/kvm_entry, hrtimer
# start/cancel/expire, sched switch/wakeup/migrate, every irq vector entry.
# The traces, the fixture's report and the vCPU tids go to the run's output
# directory (trace-exits/); selftests/payloads/trace_exits_summary.py DIR
# prints a line per window: the unprofiled guests' interrupt exits by the
# timer that expired right after each, the test VM's ticks, the profiler's
# timer expiring under another guest.
#
# $1: release binaries; $2: seconds per window; $3: rounds.
bin=$1
secs=${2:-4}
rounds=${3:-2}
PATH=$bin:$PATH
echo "TAP version 13"
echo "1..1"
outroot=$(awk '$1=="kvmreg-out"{print $2; exit}' /proc/mounts)
out=$outroot/trace-exits
mkdir -p "$out"
T=/sys/kernel/tracing
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug
w=/tmp/trexits
mkdir -p $w
kvmreg-fixture --guests ex1,ex2,ex3 --busy=50 --extra-fds=90 --extra-threads=8 \
	--mem-kib=256 --out $w >$w/fx.out 2>$w/fx.err &
fx=$!
i=0
until grep -q '^ready' $w/fx.out; do
	sleep 1
	i=$((i + 1))
	if [ $i -gt 180 ]; then
		echo "not ok 1 - fixture did not start"
		sed 's/^/# /' $w/fx.err
		exit 0
	fi
done
cp $w/fx.out "$out/"
for p in $(awk '$1=="guest"{print $6}' $w/fx.out); do
	for t in /proc/$p/task/*; do
		echo "$p ${t##*/} $(cat $t/comm)"
	done
done >"$out/tids"
echo "# $(nproc) CPUs"; cat "$out/tids" | grep KVM | sed 's/^/# /'
sleep 2
echo 0 >$T/tracing_on
echo nop >$T/current_tracer
echo 24000 >$T/buffer_size_kb
echo >$T/set_event
for e in kvm:kvm_exit kvm:kvm_entry timer:hrtimer_expire_entry timer:hrtimer_start \
	timer:hrtimer_cancel timer:tick_stop sched:sched_switch sched:sched_wakeup \
	sched:sched_migrate_task irq:irq_handler_entry; do
	echo $e >>$T/set_event 2>/dev/null || echo "# no event $e"
done
for d in $T/events/irq_vectors/*_entry; do
	[ -d "$d" ] && echo 1 >"$d/enable"
done
echo "# events: $(cat $T/set_event | tr '\n' ' ')"
phase() {
	name=$1
	echo >$T/trace
	cat /proc/interrupts >"$out/$name.irq0"
	echo 1 >$T/tracing_on
	sleep "$secs"
	echo 0 >$T/tracing_on
	cat /proc/interrupts >"$out/$name.irq1"
	cat $T/trace >"$out/$name.trace"
	for c in $T/per_cpu/cpu*; do echo "== ${c##*/}"; cat $c/stats; done >"$out/$name.stats"
	echo "# $name: $(wc -l <"$out/$name.trace") lines, overruns: $(grep -h overrun "$out/$name.stats" | tr '\n' ' ')"
}
r=1
while [ $r -le "$rounds" ]; do
	phase base$r
	kvmtop profile -b -g ex1 -n 100000 -d 1 --guestkallsyms $w/kallsyms \
		>/dev/null 2>"$out/kvmtop$r.err" &
	k=$!
	# Past its start: the steady state is traced.
	sleep 3
	phase prof$r
	kill $k
	wait $k
	sleep 2
	r=$((r + 1))
done
kill $fx
wait $fx
echo "ok 1 - traced"
