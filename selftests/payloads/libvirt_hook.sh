#!/bin/sh
# The `libvirt-hook` suite: runs contrib/libvirt/qemu the way libvirtd
# calls it ("<domain> started begin -", domain XML on stdin, pid file in
# libvirt's run directory) against real qemu processes started the way
# libvirt starts them (paused, with -name guest=<domain> and -pidfile).
#
# $1: the hook script.
echo "TAP version 13"
echo "1..7"

hook=$1
. "$(dirname "$0")/tap.sh"

rundir=/tmp/libvirt-run
mkdir -p "$rundir"
export KVMREG_LIBVIRT_RUNDIR=$rundir
pids=
trap 'kill -9 $pids 2>/dev/null' EXIT

# start DOMAIN: a paused qemu as libvirt would run it; waits for its VM.
start() {
	qemu-system-x86_64 -enable-kvm -S -name "guest=$1" -machine q35 -m 64 \
		-nodefaults -display none -monitor none -serial none \
		-pidfile "$rundir/$1.pid" &
	pids="$pids $!"
	tries=300
	while [ "$(ls /proc/$!/kvm 2>/dev/null | wc -l)" -eq 0 ]; do
		tries=$((tries - 1))
		[ $tries -gt 0 ] || return 1
		sleep 0.1
	done
	while [ ! -s "$rundir/$1.pid" ]; do sleep 0.1; done
}
# hook DOMAIN OP SUBOP: runs the hook as libvirtd does; its stderr is kept.
hook() {
	echo "<domain type='kvm'><name>$1</name></domain>" |
		"$hook" "$1" "$2" "$3" - 2> "$rundir/hook.err"
	status=$?
	sed 's/^/# hook: /' "$rundir/hook.err"
	return $status
}
# linked NAME DOMAIN: /proc/kvm/NAME points at the VM of DOMAIN's qemu.
linked() {
	pid=$(cat "$rundir/$2.pid")
	id=$(ls "/proc/$pid/kvm")
	[ "$(readlink "/proc/kvm/$1")" = "../$pid/kvm/$id" ]
}

start web || { echo "Bail out! qemu did not create its VM"; exit 1; }
if hook web prepare begin && [ ! -e /proc/kvm/web ]; then
	ok "other operations (prepare begin) do nothing"
else
	not_ok "other operations (prepare begin) do nothing"
fi
if hook web started begin && linked web web; then
	ok "started begin names the VM: /proc/kvm/web"
else
	not_ok "started begin names the VM: /proc/kvm/web"
fi
if hook web reconnect begin && linked web web; then
	ok "reconnect begin (libvirtd restarted) keeps the name"
else
	not_ok "reconnect begin (libvirtd restarted) keeps the name"
fi
if hook nosuch started begin && grep -q "no pid" "$rundir/hook.err"; then
	ok "no pid file: exit 0, reported"
else
	not_ok "no pid file: exit 0, reported"
fi

start "my guest 7"
hook "my guest 7" started begin
check "an invalid domain name is mapped: /proc/kvm/my_guest_7" \
	linked my_guest_7 "my guest 7"

start kvm7
hook kvm7 started begin
check "a reserved kvm<digits> name gets a prefix: /proc/kvm/vm-kvm7" \
	linked vm-kvm7 kvm7

# Two domains whose names map to one VM name: the second is refused by
# the kernel (EEXIST); the hook says so, succeeds, and the VM keeps kvm<id>.
start my_guest_7
if hook my_guest_7 started begin && grep -q "File exists" "$rundir/hook.err" &&
	[ "$(cat /proc/$(cat "$rundir/my_guest_7.pid")/kvm/*/name)" != my_guest_7 ]; then
	ok "a name already taken: exit 0, the kernel's EEXIST reported"
else
	not_ok "a name already taken: exit 0, the kernel's EEXIST reported"
fi
echo "# ls -l /proc/kvm"
ls -l /proc/kvm | sed 's/^/# /'
