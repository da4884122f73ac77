# Times the guest discovery of the upstream kvm_stat tool (the kernel tree's
# tools/kvm/kvm_stat/kvm_stat), imported as a module so that its own code
# runs, without the Python start-up: the `ps` walk and `-name` parsing behind
# its guest list (Tui.get_all_gnames) and the listing of the debugfs VM
# directories its DebugfsProvider reads. Prints one line:
#   kvm_stat vm_dirs=<n> named=<n> median_ms=<m>
# Usage: python3 kvm_stat_discovery.py KVM_STAT_PATH REPS
import importlib.machinery
import importlib.util
import statistics
import sys
import time


def load(path):
    loader = importlib.machinery.SourceFileLoader("kvm_stat", path)
    spec = importlib.util.spec_from_loader("kvm_stat", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main():
    kvm_stat = load(sys.argv[1])
    reps = int(sys.argv[2])
    kvm_stat.assign_globals()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        named = kvm_stat.Tui.get_all_gnames()
        vm_dirs = kvm_stat.Provider.walkdir(kvm_stat.PATH_DEBUGFS_KVM)[1]
        times.append(time.perf_counter() - start)
    print("kvm_stat vm_dirs=%d named=%d median_ms=%.3f"
          % (len(vm_dirs), len(named), statistics.median(times) * 1e3))


main()
