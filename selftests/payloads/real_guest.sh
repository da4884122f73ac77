#!/bin/sh
# The `real-guest` suite: a Linux guest (the fast kernel itself) boots
# nested in the test VM under Debian's qemu with KVM, is named through
# /proc as libvirt's hook names guests, and is watched and profiled by
# kvmtop while its init (real_guest_init.c) runs a user phase (a loop in
# guest user space) and a kernel phase (read() from /dev/zero).
#
# The test VM has one CPU (SuiteRun::one_cpu): with two, QEMU's TCG
# delivers an interrupt to the nested guest while its IF is clear and the
# guest deadlocks in early boot (Documentation/real-guest.md).
#
# $1 the kernel image, $2 its System.map, $3 the guest's root directory
# (its /init), $4 the directory holding kvmtop.
echo "TAP version 13"
echo "1..12"

. "$(dirname "$0")/tap.sh"

kernel=$1 map=$2 root=$3 kvmtop=$4/kvmtop
work=$(mktemp -d)
serial=$work/serial
: > "$serial"
qemu=$(command -v qemu-system-x86_64)
if [ -z "$qemu" ] || [ ! -e /dev/kvm ] || [ ! -d /proc/kvm ] || [ ! -x "$kvmtop" ]; then
	echo "Bail out! needs qemu-system-x86_64, /dev/kvm, /proc/kvm and $kvmtop"
	exit 1
fi
echo "# $("$qemu" --version | head -n 1); test VM: $(nproc) CPU"

# The guest's console goes to a file, not to this output: its kernel log
# is not the test VM's, and the splat scan of the run must not read it.
"$qemu" -enable-kvm -cpu host -m 128 -smp 1 -nodefaults -no-user-config \
	-display none -no-reboot -kernel "$kernel" \
	-fsdev "local,id=r,path=$root,security_model=none,readonly=on" \
	-device virtio-9p-pci,fsdev=r,mount_tag=/dev/root \
	-serial "file:$serial" \
	-append "console=ttyS0 panic=-1 pci=noacpi root=/dev/root rootfstype=9p rootflags=trans=virtio,version=9p2000.L ro init=/init" \
	> "$work/qemu.out" 2>&1 &
qpid=$!
t0=$(date +%s)
trap 'kill -9 $qpid 2>/dev/null; rm -rf "$work"' EXIT
elapsed() { echo $(($(date +%s) - t0)); }
# wait_slow SECONDS COMMAND...: as wait_for, polling once a second: the
# test VM's one CPU is the nested guest's too.
wait_slow() {
	left=$1
	shift
	until "$@"; do
		left=$((left - 1))
		[ "$left" -gt 0 ] || return 1
		sleep 1
	done
}
says() { grep -q "$1" "$serial"; }
console_tail() { tail -n 5 "$serial" | tr -d '\r' | sed 's/^/#   guest: /'; }

one_vm() { [ "$(ls /proc/$qpid/kvm 2>/dev/null | wc -l)" -eq 1 ]; }
if ! wait_for 60 one_vm; then
	not_ok "qemu (pid $qpid) has a VM within 60 s"
	sed 's/^/#   /' "$work/qemu.out"
	echo "Bail out! no VM"
	exit 1
fi
id=$(ls /proc/$qpid/kvm)
ok "qemu (pid $qpid) has VM $id"

# Named by its manager after creation, as the libvirt hook does.
echo real > "/proc/$qpid/kvm/$id/name"
check "named through /proc: /proc/kvm/real -> ../$qpid/kvm/$id" \
	test "$(readlink /proc/kvm/real)" = "../$qpid/kvm/$id"
listed() { "$kvmtop" list | awk -v id="$id" -v pid="$qpid" '$1 == "real" && $2 == id && $3 == pid { f = 1 } END { exit !f }'; }
check "kvmtop list shows it as real" listed

if wait_slow 180 says GUEST-UP; then
	ok "the guest's init runs ($(elapsed) s after qemu started)"
else
	not_ok "the guest's init runs within 180 s"
	console_tail
	echo "Bail out! the guest did not boot"
	exit 1
fi

python3 - "$map" "$work/wrong.map" <<'PY'
import sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        a, rest = line.split(" ", 1)
        out.write(f"{int(a, 16) + (1 << 30):016x} {rest}")
PY

# collect PHASE: once the init says PHASE, a 6 s profile of the guest as
# JSON in $work/PHASE.json, with beside it (the test VM's one CPU is slow
# to start tools one after the other) the overview in the user phase and,
# in the kernel phase, a profile with the map moved by 1 GiB: symbols
# that do not match the running guest. Only kvmtop runs during a phase;
# everything is judged after both, so that no check outlasts a phase.
collect() {
	wait_slow 90 says "PHASE $1" || return 1
	sleep 2
	if [ "$1" = user ]; then
		"$kvmtop" -b -n 3 -d 2 --json > "$work/top.json" 2>&1 &
	else
		"$kvmtop" profile -g real --guestkallsyms "$work/wrong.map" -b -n 1 -d 6 --json \
			> "$work/wrong.json" 2>&1 &
	fi
	beside=$!
	"$kvmtop" profile -g real --guestkallsyms "$map" -b -n 1 -d 6 --json --top 8 \
		> "$work/$1.json" 2> "$work/$1.err"
	status=$?
	# Not a bare wait: qemu is this shell's child too.
	wait "$beside"
	return $status
}
collect user
user=$?
collect kernel
kernel=$?

# show PHASE: the profile's totals and top rows, as comments.
show() {
	python3 - "$work/$1.json" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
print(f"#   {f['guest_kernel']} guest kernel, {f['guest_user']} guest user, {f['host']} host samples; attribution {f['attribution']}")
for h in f["functions"]:
    print(f"#   {h['samples']:6} {h['symbol']}")
PY
}
# judge PHASE EXPR: a Python expression over the profile `f` and g, the
# guest samples.
judge() {
	python3 - "$work/$1.json" "$2" <<'PY'
import json, re, sys
f = json.load(open(sys.argv[1]))
g = f["guest_kernel"] + f["guest_user"]
sys.exit(0 if g >= 100 and eval(sys.argv[2]) else 1)
PY
}

# The user phase: the guest's own loop. Under this nesting about 1,500
# guest samples come in 6 s; a right attribution puts all but the timer
# tick's few in guest user mode, so 80% leaves room for the tick and for
# the phase's edges, and a wrong CPL (the first try's 0% user) fails.
if [ $user = 0 ]; then
	show user
	check "user phase: at least 80% of the guest's samples in guest user mode" \
		judge user 'f["guest_user"] >= 0.8 * g'
	check "samples tagged with the guest's VM (PERF_SAMPLE_GUEST_ID)" \
		judge user 'f["attribution"] == "guest-id" and f["id"] == '"$id"
	# The init's user_spin() and the symbol after it, from its symbols.
	span=$(nm -n "$root/init" | awk '$3 == "user_spin" { a = $1; next } a && !b { b = $1 } END { print a, b }')
	echo "# user_spin: $span"
	check "user phase: the hottest row is a guest user address in the init's user_spin()" \
		judge user 'f["functions"][0]["module"] == "[guest user]" and int("'"${span% *}"'", 16) <= int(f["functions"][0]["symbol"], 16) < int("'"${span#* }"'", 16)'
	# CPU, exits and memory while it spins, from the overview beside the
	# profile. Its vCPU thread is always busy; how much of that is guest
	# mode depends on how slow the emulated exits are (49-99% seen), so
	# "busy in guest mode" asks for a busy thread and a good part of it
	# in the guest.
	check "kvmtop shows it busy, in guest mode, with exits and its 128 MiB" \
		python3 - "$work/top.json" <<'PY'
import json, sys
frames = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
rows = [r for r in frames[-1]["guests"] if r["name"] == "real"] if frames else []
r = rows[0] if rows else {}
if not rows:
    print(f"#   kvmtop: {len(frames)} frames, guests of the last: {[(x['name'], x['pid']) for x in frames[-1]['guests']] if frames else None}")
print("#   kvmtop: " + ", ".join(f"{k} {r.get(k)}" for k in ("cpu_pct", "guest_pct", "exits_per_s", "memory_bytes", "vcpus")))
sys.exit(0 if r and (r["cpu_pct"] or 0) > 80 and (r["guest_pct"] or 0) > 25
         and (r["exits_per_s"] or 0) > 0
         and r["memory_bytes"] and r["memory_bytes"] >= 128 << 20 else 1)
PY
else
	sed 's/^/#   /' "$work/user.err"
	not_ok "user phase profiled"
	not_ok "samples tagged with the guest's VM (PERF_SAMPLE_GUEST_ID)"
	not_ok "user phase: the hottest row in user_spin()"
	not_ok "kvmtop shows it busy in guest mode"
	console_tail
fi

# The kernel phase: read() of 64 KiB from /dev/zero. Nearly all of it is
# clearing the user buffer in the guest kernel; the rows that name the
# read path (the syscall entry, vfs/ksys read, read_iter_zero,
# iov_iter_zero, the clear/stos routines) must hold most of it.
if [ $kernel = 0 ]; then
	show kernel
	check "kernel phase: at least 80% of the guest's samples in the guest kernel" \
		judge kernel 'f["guest_kernel"] >= 0.8 * g'
	check "kernel phase: the read-from-/dev/zero path holds at least half the guest kernel's samples" \
		judge kernel 'sum(h["samples"] for h in f["functions"] if re.search(r"zero|clear|stos|read|entry_SYSCALL|syscall", h["symbol"])) >= 0.5 * f["guest_kernel"]'
	check "symbols that do not match the guest get a note; the right ones none" \
		judge kernel 'not any("outside every symbol" in n for n in f["notes"]) and any("outside every symbol" in n for n in json.load(open("'"$work/wrong.json"'"))["notes"])'
else
	sed 's/^/#   /' "$work/kernel.err"
	not_ok "kernel phase profiled"
	not_ok "kernel phase: the read path"
	not_ok "symbols that do not match the guest get a note"
	console_tail
fi

gone() { ! kill -0 $qpid 2>/dev/null; }
if wait_slow 120 gone && says GUEST-DONE; then
	ok "the guest ran both phases and powered off ($(elapsed) s)"
else
	not_ok "the guest ran both phases and powered off within 120 s of the checks"
	console_tail
fi
