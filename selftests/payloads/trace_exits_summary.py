#!/usr/bin/env python3
"""One line per window traced by the trace-exits suite (trace_exits.sh):
the unprofiled guests' (ex2, ex3) interrupt exits per guest and second, by
what the host handled right after each on that CPU (the tick, a sleeper's
wakeup, the profiler's perf timer, an interrupt with no timer due, other);
their share of time in guest mode and tick exits per second of it; ex1's
interrupt exits; the test VM's ticks handled and skipped per CPU; timer
interrupts with nothing due (and those within 5 ms of a cancelled perf
timer); and how often the perf timer expired while ex2 or ex3 ran.
Usage: trace_exits_summary.py DIR (the run's trace-exits directory)."""
import re, sys, collections, glob, os, gzip
d = sys.argv[1]
names = {}
for line in open(os.path.join(d, 'fx.out')):
    f = line.split()
    if f and f[0] == 'guest':
        names[int(f[5])] = f[1]
vcpu = {}
for line in open(os.path.join(d, 'tids')):
    p, t, comm = line.split(' ', 2)
    if 'KVM' in comm:
        vcpu[int(t)] = names[int(p)]
LINE = re.compile(r'^\s*(.*)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+): (.*)$')
print(f"{'window':10} {'s':>5} | {'ex2/3 intr/s':>12} {'tick':>6} {'wakeup':>6} {'perf':>5} {'empty':>5} {'other':>5} | {'guest%':>6} {'tick/gs':>7} | {'ex1 intr/s':>10} | {'ticks/CPU/s':>11} {'skipped/CPU/s':>13} {'empty tmr/s':>11} {'of which after perf cancel':>26} {'perf on ex2/3':>13}")
def key(p):
    b = os.path.basename(p).replace('.trace', '').replace('.gz', '')
    m = re.match(r'([a-z]+?)(\d*)(\d)$', b)
    return (int(m.group(3)), b) if m else (0, b)
for path in sorted(glob.glob(os.path.join(d, "*.trace")) + glob.glob(os.path.join(d, "*.trace.gz")), key=key):
    per = collections.defaultdict(list)
    for l in (gzip.open(path, 'rt', errors='replace') if path.endswith('.gz') else open(path, errors='replace')):
        m = LINE.match(l)
        if m:
            per[int(m.group(3))].append((float(m.group(4)), int(m.group(2)), m.group(5), m.group(6)))
    if not per:
        continue
    t0 = min(es[0][0] for es in per.values()); t1 = max(es[-1][0] for es in per.values())
    span = t1 - t0
    ncpu = len(per)
    cls = collections.Counter(); gt = collections.Counter(); ex1 = 0
    ticks = 0; skipped = 0; empty = 0; empty_after_cancel = 0; perf_foreign = 0
    for cpu, es in per.items():
        running = None; last_entry = {}; tick_now = []; perf_ptrs = set(); last_cancel = None
        for i, (ts, pid, name, rest) in enumerate(es):
            if name == 'sched_switch':
                m = re.search(r'next_pid=(\d+)', rest); running = vcpu.get(int(m.group(1))) if m else None
            elif name == 'hrtimer_start' and 'perf_swevent_hrtimer' in rest:
                perf_ptrs.add(re.search(r'hrtimer=(\S+)', rest).group(1))
            elif name == 'hrtimer_cancel':
                if re.search(r'hrtimer=(\S+)', rest).group(1) in perf_ptrs: last_cancel = ts
            elif name == 'hrtimer_expire_entry':
                if 'tick_nohz_handler' in rest:
                    ticks += 1; tick_now.append(int(re.search(r'now=(\d+)', rest).group(1)))
                if 'perf_swevent_hrtimer' in rest and running in ('ex2', 'ex3'):
                    perf_foreign += 1
            elif name == 'local_timer_entry':
                nxt = es[i + 1][2] if i + 1 < len(es) else None
                if nxt != 'hrtimer_expire_entry':
                    empty += 1
                    if last_cancel is not None and ts - last_cancel < 0.005:
                        empty_after_cancel += 1
            if pid in vcpu and name == 'kvm_entry':
                last_entry[pid] = ts
            if pid in vcpu and name == 'kvm_exit':
                g = vcpu[pid]
                if pid in last_entry: gt[g] += ts - last_entry.pop(pid)
                if 'reason interrupt' not in rest: continue
                if g == 'ex1': ex1 += 1; continue
                what = []
                for (_, _, n2, r2) in es[i + 1:i + 60]:
                    if n2 in ('kvm_entry', 'sched_switch', 'kvm_exit'): break
                    if n2 == 'hrtimer_expire_entry': what.append(re.search(r'function=(\S+)', r2).group(1))
                    elif n2.endswith('_entry'): what.append(n2)
                k = ' '.join(what)
                if 'perf_swevent' in k: c = 'perf'
                elif 'tick_nohz_handler' in k: c = 'tick'
                elif 'hrtimer_wakeup' in k: c = 'wakeup'
                elif k.startswith('local_timer_entry'): c = 'empty'
                else: c = 'other'
                cls[c] += 1
        gaps = [b - a for a, b in zip(tick_now, tick_now[1:])]
        skipped += sum(max(0, round(g / 4e6) - 1) for g in gaps)
    n = 2 * span
    tot = sum(cls.values())
    g23 = (gt['ex2'] + gt['ex3'])
    print(f"{os.path.basename(path).replace('.trace', '').replace('.gz', ''):10} {span:5.2f} | {tot/n:12.1f} {cls['tick']/n:6.1f} {cls['wakeup']/n:6.1f} {cls['perf']/n:5.1f} {cls['empty']/n:5.1f} {cls['other']/n:5.1f} | {100*g23/n:6.1f} {cls['tick']/g23:7.0f} | {ex1/span:10.1f} | {ticks/span/ncpu:11.0f} {skipped/span/ncpu:13.0f} {empty/span:11.1f} {empty_after_cancel/span:26.1f} {perf_foreign:13d}")
