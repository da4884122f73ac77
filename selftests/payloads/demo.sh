#!/bin/sh
# The demo (`cargo xtask demo`), run inside the test VM on the patched
# kernel: three fixture guests named web, db and batch, Debian's qemu
# paused and named through /proc, and what the kernel and kvmtop say
# about them.  Every step is also a TAP point, so a broken demo fails.
#
# $1: the directory holding the project's binaries (kvmreg-fixture, kvmtop).
echo "TAP version 13"
echo "1..9"

bin=$1
# The project's binaries by name, as a user who installed them would type.
PATH=$bin:$PATH
. "$(dirname "$0")/tap.sh"
# show COMMAND...: prints the command as typed, then runs it.
show() { echo; echo "\$ $*"; "$@"; }

work=/tmp/demo
mkdir -p "$work/symbols"
cleanup() { kill -9 $fixture $qemu 2>/dev/null; }
trap cleanup EXIT

# Three guests, two vCPUs each, busy about half of the time.
kvmreg-fixture --guests web,db,batch --vcpus 2 --busy 50 \
	--out "$work/symbols" > "$work/fixture.out" &
fixture=$!
ready() { grep -qx ready "$work/fixture.out"; }
if wait_for 60 ready; then
	ok "fixture guests started"
	sed 's/^/# /' "$work/fixture.out"
else
	not_ok "fixture guests started within 60 s"
fi

qemu-system-x86_64 -enable-kvm -S -name vm-from-qemu -machine q35 -m 64 \
	-nodefaults -display none -monitor none -serial none &
qemu=$!
one_vm() { [ "$(ls /proc/$qemu/kvm 2>/dev/null | wc -l)" -eq 1 ]; }
if wait_for 30 one_vm; then
	id=$(ls /proc/$qemu/kvm)
	show cat /proc/$qemu/kvm/$id/name
	echo "\$ echo paused > /proc/$qemu/kvm/$id/name"
	if echo paused > /proc/$qemu/kvm/$id/name; then
		ok "qemu's VM renamed through /proc"
	else
		not_ok "qemu's VM renamed through /proc"
	fi
else
	not_ok "qemu created its VM within 30 s"
fi

if show ls -l /proc/kvm && [ -L /proc/kvm/web ] && [ -L /proc/kvm/db ] &&
	[ -L /proc/kvm/batch ] && [ -L /proc/kvm/paused ]; then
	ok "/proc/kvm lists web, db, batch and paused"
else
	not_ok "/proc/kvm lists web, db, batch and paused"
fi

if show cat /proc/kvm/web/status && show cat /proc/kvm/web/vcpus; then
	ok "status and vcpus of web"
else
	not_ok "status and vcpus of web"
fi

# Every guest in one read: id, pid, uid, vCPUs, KiB, created, link name.
if show cat /proc/kvm/.list && [ "$(grep -c ' \(web\|db\|batch\|paused\)$' /proc/kvm/.list)" -eq 4 ]; then
	ok "/proc/kvm/.list has a line for each of the four guests"
else
	not_ok "/proc/kvm/.list has a line for each of the four guests"
fi

if [ -x "$bin/kvmtop" ]; then
	if show kvmtop list; then
		ok "kvmtop list"
	else
		not_ok "kvmtop list"
	fi
	# The same guests as an unpatched kernel would show them.
	if show kvmtop --no-registry list; then
		ok "kvmtop --no-registry list"
	else
		not_ok "kvmtop --no-registry list"
	fi
	if show kvmtop -b -n 2 -d 1; then
		ok "kvmtop -b -n 2"
	else
		not_ok "kvmtop -b -n 2"
	fi
	if show kvmtop profile -g web --guestmount "$work/symbols" \
		-b -n 1 -d 2; then
		ok "kvmtop profile -g web"
	else
		not_ok "kvmtop profile -g web"
	fi
else
	skip "kvmtop list" "kvmtop is not built"
	skip "kvmtop --no-registry list" "kvmtop is not built"
	skip "kvmtop -b -n 2" "kvmtop is not built"
	skip "kvmtop profile -g web" "kvmtop is not built"
fi
