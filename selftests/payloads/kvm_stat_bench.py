#!/usr/bin/env python3
"""Benchmark, not a test (`cargo xtask run bench-kvm-stat`): what a refresh
of the tree's kvm_stat costs with 100 guests shaped like qemu (90 extra fds
and 8 extra threads per VMM process), reading debugfs (the way a user
without tracepoints had) against reading the VM registry (-r), in the same
boot of the test VM.

kvm_stat is imported as a module and its own code is timed in this
process (CPU time, so without Python's start): a refresh is the
provider's read() of every field of every guest, as each frame of the
live view, -l and -1 do; the by-guest view ('b') also names every guest
each frame, from qemu's command lines before, from one read of
/proc/kvm/.list with a registry. Each round times every figure once, the
order alternating from round to round; the summary is the median over the
rounds with a distribution-free 95% interval of the median, ratios taken
per round.

Arguments: the kvm_stat script, the directory of the project's release
binaries (kvmreg-fixture).
"""
import importlib.machinery
import importlib.util
import math
import os
import subprocess
import sys
import time

GUESTS = 100
ROUNDS = 21


def load_kvm_stat(path):
    loader = importlib.machinery.SourceFileLoader('kvm_stat', path)
    spec = importlib.util.spec_from_loader('kvm_stat', loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.assign_globals()
    return module


def median_interval(values):
    """The median and a distribution-free 95% interval of it: the order
    statistics k and n + 1 - k with P(Binomial(n, 1/2) < k) <= 2.5%."""
    v = sorted(values)
    n = len(v)
    k, below = 0, 0.0
    while True:
        p = math.comb(n, k) / 2 ** n
        if below + p > 0.025:
            break
        below += p
        k += 1
    k = max(k, 1)
    mid = (v[(n - 1) // 2] + v[n // 2]) / 2
    return mid, v[k - 1], v[n - k]


def cpu_ms(fn):
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1000


def main():
    kvm_stat_path, bins = sys.argv[1], sys.argv[2]
    print('TAP version 13')
    print('1..1')
    names = ','.join('g{}'.format(i) for i in range(GUESTS))
    fixture = subprocess.Popen(
        [os.path.join(bins, 'kvmreg-fixture'), '--guests', names,
         '--vcpus', '1', '--busy', '1', '--extra-fds', '90',
         '--extra-threads', '8'],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        guests = []
        for line in fixture.stdout:
            if line.strip() == 'ready':
                break
            f = line.split()
            if f[:1] == ['guest']:
                guests.append(int(f[5]))
        if len(guests) != GUESTS:
            print('not ok 1 - {} of {} guests started'
                  .format(len(guests), GUESTS))
            return
        run(load_kvm_stat(kvm_stat_path), guests)
    finally:
        fixture.kill()
        fixture.wait()


def run(ks, pids):
    debugfs = ks.DebugfsProvider(0, '', False)
    registry = ks.RegistryProvider(0, '', False)
    real_read_registry = ks.read_registry

    def names_cmdline():
        ks.read_registry = lambda: None
        try:
            for pid in pids:
                ks.Tui.get_gname_from_pid(pid)
        finally:
            ks.read_registry = real_read_registry

    def names_registry():
        vms = ks.read_registry()
        for pid in pids:
            ks.registry_gnames(vms, pid)

    figures = [('refresh, debugfs', debugfs.read),
               ('refresh, registry (-r)', registry.read),
               ('guest names, qemu command lines', names_cmdline),
               ('guest names, /proc/kvm/.list', names_registry)]
    fields = (len(debugfs.fields), len(registry.fields))
    print('# {} guests, one VMM process each; fields per guest: debugfs {},'
          ' registry {}; {} rounds'.format(len(pids), fields[0], fields[1],
                                           ROUNDS))
    times = {name: [] for name, _ in figures}
    for r in range(ROUNDS):
        order = figures if r % 2 == 0 else list(reversed(figures))
        for name, fn in order:
            times[name].append(cpu_ms(fn))
    for name, _ in figures:
        m, lo, hi = median_interval(times[name])
        print('# {:<34} {:9.2f} ms CPU [{:.2f}, {:.2f}]'
              .format(name, m, lo, hi))
    for old, new in ((0, 1), (2, 3)):
        ratios = [a / b for a, b in zip(times[figures[old][0]],
                                        times[figures[new][0]]) if b > 0]
        m, lo, hi = median_interval(ratios)
        print('# {} / {}: {:.1f}x [{:.1f}, {:.1f}]'
              .format(figures[old][0], figures[new][0].split(', ')[1],
                      m, lo, hi))
    print('ok 1 - kvm_stat refresh measured')


if __name__ == '__main__':
    main()
