#!/bin/sh
# The permission matrix of the VM registry (Documentation/security.md),
# run as root inside the test VM on the patched kernel. Every cell of the
# table there is one TAP point here: who (root, the owner's uid, another
# uid, root without CAP_SYS_PTRACE, the owner under Yama's ptrace_scope 2,
# the owner against a non-dumpable VMM, another pid namespace) can list,
# read and rename a VM, and what leaks to whom (EEXIST, uevents, perf).
#
# $1: the directory holding the project's binaries (kvmreg-fixture).
echo "TAP version 13"
bin=$1
. "$(dirname "$0")/tap.sh"

OWNER=1000
OTHER=2000
work=/tmp/permissions
mkdir -p "$work/bin"
chmod 755 "$work" "$work/bin"
# The other uids run a copy of the fixture: $bin may be below a directory
# only its owner can enter (a checkout in /root).
cp "$bin/kvmreg-fixture" "$work/bin/" ||
	{ echo "Bail out! cannot copy kvmreg-fixture"; exit 1; }
chmod 755 "$work/bin/kvmreg-fixture"
PATH=$work/bin:$PATH
kvm_mode=$(stat -c %a /dev/kvm)
scope_file=/proc/sys/kernel/yama/ptrace_scope
scope=$(cat $scope_file 2>/dev/null)
pids=
cleanup() {
	kill -9 $pids 2>/dev/null
	chmod "$kvm_mode" /dev/kvm
	[ -n "$scope" ] && echo "$scope" > $scope_file 2>/dev/null
}
trap cleanup EXIT
chmod 666 /dev/kvm

# as UID COMMAND...: runs COMMAND with that uid and gid, no groups.
as() { u=$1; shift; setpriv --reuid="$u" --regid="$u" --clear-groups "$@"; }
# nocap COMMAND...: root without CAP_SYS_PTRACE (bounding set).
nocap() { setpriv --bounding-set=-sys_ptrace "$@"; }
# not COMMAND...: succeeds when COMMAND fails.
not() { ! "$@"; }
# pidns COMMAND...: root in a new pid namespace with its own /proc.
pidns() { unshare --pid --fork --mount-proc "$@"; }

# start NAME UID [FLAGS]: a fixture VMM as UID; sets pid, id, vmfd, tid.
start() {
	out=$work/$1.out
	as "$2" kvmreg-fixture --guests "$1" --vcpus 1 --busy 5 $3 \
		> "$out" 2> "$work/$1.err" &
	pids="$pids $!"
	if ! wait_for 60 grep -qx ready "$out"; then
		not_ok "fixture $1 (uid $2) started"
		sed 's/^/# /' "$work/$1.err"
		exit 1
	fi
	set -- $(grep "^guest $1 " "$out")
	pid=$6 id=$4 vmfd=$8 tid=${12%%,*}
}

start alpha $OWNER
a_pid=$pid a_id=$id a_fd=$vmfd a_tid=$tid
start beta $OWNER --non-dumpable
b_pid=$pid b_id=$id
echo "# alpha: uid $OWNER pid $a_pid id $a_id; beta: uid $OWNER, non-dumpable, pid $b_pid id $b_id"
# Names belong to users: root sees uid $OWNER's VMs as <name>@$OWNER.
[ "$(cat /proc/kvm/alpha@$OWNER/name 2>/dev/null)" = alpha ] &&
	[ "$(cat /proc/kvm/beta@$OWNER/name 2>/dev/null)" = beta ] ||
	not_ok "alpha and beta are named in /proc/kvm"

# The probes; each runs as the caller's prefix says and succeeds or not.
# A VM is listed as <name> to its owner uid and <name>@<uid> to others:
# lists and links accept either, the checks after the matrix tell which.
lists() { "$@" ls /proc/kvm 2>/dev/null | grep -qx "$name\|$name@[0-9]*"; }
links() {
	for l in "$name" "$name@$OWNER"; do
		[ "$("$@" readlink "/proc/kvm/$l" 2>/dev/null)" = "../$vpid/kvm/$vid" ] &&
			return 0
	done
	return 1
}
# The VM's line in /proc/kvm/.list, under either name.
in_list() {
	"$@" cat /proc/kvm/.list 2>/dev/null | awk -v id="$vid" -v n="$name" \
		'$1 == id && ($7 == n || index($7, n "@") == 1) { f = 1 } END { exit !f }'
}
reads_status() { "$@" grep -q "^Name:" "/proc/$vpid/kvm/$vid/status" 2>/dev/null; }
reads_stats() { [ "$("$@" head -c 16 "/proc/$vpid/kvm/$vid/stats" 2>/dev/null | wc -c)" -eq 16 ]; }
reads_vcpus() { "$@" cat "/proc/$vpid/kvm/$vid/vcpus" >/dev/null 2>&1; }
reads_vcpu_stats() { [ "$("$@" head -c 16 "/proc/$vpid/kvm/$vid/vcpu_stats" 2>/dev/null | wc -c)" -eq 16 ]; }
renames() {
	"$@" sh -c "echo renamed > /proc/$vpid/kvm/$vid/name" 2>/dev/null || return 1
	# Undo as root, and make sure the rename really happened.
	[ "$(cat /proc/$vpid/kvm/$vid/name)" = renamed ] &&
		echo "$name" > "/proc/$vpid/kvm/$vid/name"
}

# cell SUBJECT ACTION EXPECT PREFIX...: EXPECT is yes or no.
cell() {
	subject=$1 action=$2 expect=$3
	shift 3
	if "$action" "$@"; then got=yes; else got=no; fi
	check "$subject: $action $name: $expect" [ "$got" = "$expect" ]
}

actions="lists in_list links reads_status reads_vcpus reads_stats reads_vcpu_stats renames"
# row SUBJECT "EXPECTATIONS" PREFIX...: one expectation per action above.
# (Its own variable names: sh variables are global, and cell sets its own.)
row() {
	row_subject=$1 row_expect=$2
	shift 2
	for a in $actions; do
		e=${row_expect%% *}
		row_expect=${row_expect#* }
		cell "$row_subject" "$a" "$e" "$@"
	done
}

name=alpha vpid=$a_pid vid=$a_id
row root "yes yes yes yes yes yes yes yes" env
row "owner uid" "yes yes yes yes yes yes yes yes" as $OWNER
row "other uid" "no no no no no no no no" as $OTHER
# The errnos of the table's "other uid" cells: the link does not exist for
# that caller, the directory does but may not be read.
errmsg() { "$@" 2>&1 >/dev/null | grep -o "No such file or directory\|Permission denied" | head -n 1; }
check "other uid: resolving /proc/kvm/alpha fails with ENOENT" \
	[ "$(errmsg as $OTHER readlink -v /proc/kvm/alpha)" = "No such file or directory" ]
check "other uid: resolving /proc/kvm/alpha@$OWNER fails with ENOENT" \
	[ "$(errmsg as $OTHER readlink -v /proc/kvm/alpha@$OWNER)" = "No such file or directory" ]
# Which name each sees: the owner uid its own name, root a qualified one.
listed_as() { "$@" ls /proc/kvm 2>/dev/null | grep -qx "$link"; }
link=alpha
check "owner uid: lists alpha as alpha" listed_as as $OWNER
check "root: does not list alpha unqualified" not listed_as env
link=alpha@$OWNER
check "root: lists alpha as alpha@$OWNER" listed_as env
check "owner uid: does not list its own alpha qualified" not listed_as as $OWNER
check "other uid: reading alpha's status fails with EACCES" \
	[ "$(errmsg as $OTHER cat "/proc/$a_pid/kvm/$a_id/status")" = "Permission denied" ]
row "root without CAP_SYS_PTRACE" "no no no no no no no no" nocap
if [ -n "$scope" ]; then
	# ptrace_scope 2: attaching needs CAP_SYS_PTRACE; reading does not.
	echo 2 > $scope_file
	row "owner uid, yama ptrace_scope 2" "yes yes yes yes yes yes yes no" as $OWNER
	echo "$scope" > $scope_file
else
	skip "owner uid, yama ptrace_scope 2" "this kernel has no Yama"
fi
row "other pid namespace (root)" "no no no no no no no no" pidns

name=beta vpid=$b_pid vid=$b_id
row "owner uid, non-dumpable VMM" "no no no no no no no no" as $OWNER
row "root, non-dumpable VMM" "yes yes yes yes yes yes yes yes" env

# Names belong to users: another uid may call its VM alpha too (no
# EEXIST, so it learns nothing of uid $OWNER's alpha), and root then sees
# both, each qualified by its owner.
as $OTHER kvmreg-fixture --guests alpha --vcpus 1 --busy 1 \
	> "$work/dup.out" 2> "$work/dup.err" &
dup=$!
pids="$pids $dup"
wait_for 60 grep -qx ready "$work/dup.out"
check "other uid: names its own VM alpha too (no EEXIST)" \
	grep -q "^guest alpha .* named yes" "$work/dup.out"
check "other uid: sees its own alpha as alpha" \
	[ "$(as $OTHER cat /proc/kvm/alpha/name 2>/dev/null)" = alpha ]
link=alpha@$OTHER
check "root: lists the other uid's alpha as alpha@$OTHER" listed_as env
link=alpha@$OWNER
check "root: still lists alpha@$OWNER" listed_as env
kill -9 $dup 2>/dev/null

# What leaks, on purpose and documented.
# 1. (Names in use are no longer visible to other uids: see above.)
# 2. KVM uevents reach unprivileged listeners: with the VM's id, never its
# name (which only those who may see the VM in /proc learn).
cat > "$work/listen.py" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
s.bind((0, 1))
s.settimeout(15)
print("listening", flush=True)
while True:
    msg = s.recv(8192).split(b"\0")
    if b"EVENT=rename" in msg:
        print(" ".join(m.decode() for m in msg if m.startswith(b"VM_")))
        break
EOF
as $OTHER python3 "$work/listen.py" > "$work/listen.out" 2>&1 &
listener=$!
wait_for 10 grep -q listening "$work/listen.out"
echo leaked > "/proc/$a_pid/kvm/$a_id/name"
wait $listener
echo alpha > "/proc/$a_pid/kvm/$a_id/name"
sed 's/^/# listener: /' "$work/listen.out"
check "leak: another uid receives the rename uevent with VM_ID" \
	grep -qw "VM_ID=$a_id" "$work/listen.out"
check "another uid's rename uevent carries no name" \
	not grep -q "VM_NAME\|leaked" "$work/listen.out"

# 3. Unchanged upstream rules, for comparison: debugfs and fdinfo.
lists_debugfs() { "$@" ls /sys/kernel/debug/kvm >/dev/null 2>&1; }
fdinfo_id() {
	"$@" cat "/proc/$a_pid/fdinfo/$a_fd" 2>/dev/null |
		grep -qx "kvm_vm_id:	$a_id"
}
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug
check "root: lists /sys/kernel/debug/kvm" lists_debugfs env
check "other uid: cannot list /sys/kernel/debug/kvm" not lists_debugfs as $OTHER
check "owner uid: fdinfo of the VM fd shows kvm_vm_id" fdinfo_id as $OWNER
check "other uid: cannot read the fdinfo of the VM fd" not fdinfo_id as $OTHER

# 4. perf: a sampling event with PERF_SAMPLE_GUEST_ID on a vCPU thread
# follows perf's own rules (ptrace READ over the thread).
cat > "$work/perf.py" <<'EOF'
import ctypes, struct, sys
tid = int(sys.argv[1])
# type SOFTWARE, size 128, config CPU_CLOCK, period 1 ms,
# sample_type IP|TID|GUEST_ID (1 << 25), exclude_kernel and exclude_hv
# (what perf_event_paranoid 2 asks of unprivileged users).
attr = struct.pack("=IIQQQQQ", 1, 128, 0, 1000000, 1 | 2 | (1 << 25), 0,
                   (1 << 5) | (1 << 6)).ljust(128, b"\0")
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(298, attr, tid, -1, -1, 0)
print("opened" if fd >= 0 else "errno %d" % ctypes.get_errno())
EOF
samples() { [ "$("$@" python3 "$work/perf.py" "$a_tid")" = "$expect_perf" ]; }
expect_perf=opened
check "owner uid: may sample its vCPU thread with PERF_SAMPLE_GUEST_ID" \
	samples as $OWNER
expect_perf="errno 13"
check "other uid: may not sample the owner's vCPU thread (EACCES)" \
	samples as $OTHER
echo "1..$n"
