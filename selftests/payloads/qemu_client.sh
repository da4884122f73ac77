#!/bin/sh
# The `qemu-client` suite: Debian's own qemu, a real VMM that knows nothing
# of the registry, shows up in /proc/kvm, is renamed through
# /proc/<pid>/kvm/<id>/name and disappears when it exits.
#
# qemu is started paused (-S): it creates its VM, memslots and vCPUs but
# runs no guest code, so the check costs no emulation time.
echo "TAP version 13"
echo "1..9"

. "$(dirname "$0")/tap.sh"

qemu=$(command -v qemu-system-x86_64)
if [ -z "$qemu" ] || [ ! -e /dev/kvm ] || [ ! -d /proc/kvm ]; then
	echo "Bail out! needs qemu-system-x86_64, /dev/kvm and /proc/kvm"
	exit 1
fi

"$qemu" -enable-kvm -S -name web -machine q35 -smp 2 -m 64 \
	-nodefaults -display none -monitor none -serial none &
pid=$!
trap 'kill -9 $pid 2>/dev/null' EXIT

one_vm() { [ "$(ls /proc/$pid/kvm 2>/dev/null | wc -l)" -eq 1 ]; }
if wait_for 30 one_vm; then
	id=$(ls /proc/$pid/kvm)
	ok "qemu (pid $pid) has one VM: /proc/$pid/kvm/$id"
else
	not_ok "qemu (pid $pid) has one VM within 30 s"
	echo "Bail out! no VM to check"
	exit 1
fi

check "/proc/kvm/kvm$id -> ../$pid/kvm/$id" \
	test "$(readlink /proc/kvm/kvm$id)" = "../$pid/kvm/$id"

status=/proc/$pid/kvm/$id/status
field() { awk -F'\t' -v k="$1:" '$1 == k { print $2 }' "$status"; }
# The vCPUs are created after the VM: wait for both.
two_vcpus() { [ "$(field Vcpus)" = 2 ]; }
check "status says 2 vCPUs" wait_for 30 two_vcpus
check "status: Pid $pid, Name kvm$id, at least 64 MiB" \
	test "$(field Pid)" = "$pid" -a "$(field Name)" = "kvm$id" \
	-a "$(field MemoryKiB)" -ge 65536

check "rename: echo web > /proc/$pid/kvm/$id/name" \
	sh -c "echo web > /proc/$pid/kvm/$id/name"
check "/proc/kvm/web -> ../$pid/kvm/$id, /proc/kvm/kvm$id gone" \
	test "$(readlink /proc/kvm/web)" = "../$pid/kvm/$id" \
	-a ! -e "/proc/kvm/kvm$id"
echo "# ls -l /proc/kvm"
ls -l /proc/kvm | sed 's/^/# /'
echo "# cat /proc/kvm/web/status"
sed 's/^/# /' /proc/kvm/web/status
check "cat /proc/kvm/web/status names web" \
	grep -qx "$(printf 'Name:\tweb')" /proc/kvm/web/status

kill "$pid"
wait "$pid" 2>/dev/null
gone() { [ ! -e /proc/kvm/web ]; }
check "qemu exits: /proc/kvm/web disappears" wait_for 10 gone
check "no VM left in /proc/kvm" test -z "$(ls /proc/kvm)"
