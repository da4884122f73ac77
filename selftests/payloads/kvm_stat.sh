#!/bin/sh
# kvm_stat (the tree's tools/kvm/kvm_stat, patch "tools/kvm_stat: ...")
# on the VM registry, run as root inside the test VM on the patched
# kernel: an unprivileged user sees their own guests by name with exits
# moving and nobody else's, -g takes /proc/kvm's names and says so, the
# user falls back to the registry where tracepoints are out of reach, and
# root's registry totals agree with debugfs.
#
# $1: the directory holding the project's binaries (kvmreg-fixture);
# $2: the kvm_stat script of the tree under test.
echo "TAP version 13"
bin=$1
. "$(dirname "$0")/tap.sh"

OWNER=1000
OTHER=2000
work=/tmp/kvm-stat
mkdir -p "$work/bin"
chmod 755 "$work" "$work/bin"
# The other uids run copies: $bin and the tree may be below a directory
# only their owner can enter (a checkout in /root).
cp "$bin/kvmreg-fixture" "$2" "$work/bin/" ||
	{ echo "Bail out! cannot copy kvmreg-fixture and kvm_stat"; exit 1; }
chmod 755 "$work/bin/kvmreg-fixture" "$work/bin/kvm_stat"
# The system python3 that kvm_stat's "#!/usr/bin/env python3" finds for any user.
PATH=$work/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The users get /dev/kvm through a group of its own, as with udev's rule,
# never a world-writable device; the device is restored at exit.
kvm_owner=$(stat -c %u:%g /dev/kvm) kvm_mode=$(stat -c %a /dev/kvm)
kvm_group=$(getent group kvm | cut -d: -f3)
pids=
trap 'kill -9 $pids 2>/dev/null; chown "$kvm_owner" /dev/kvm; chmod "$kvm_mode" /dev/kvm' EXIT
chgrp "${kvm_group:=36}" /dev/kvm && chmod 660 /dev/kvm ||
	{ echo "Bail out! cannot give /dev/kvm to group $kvm_group"; exit 1; }
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug

# as UID COMMAND...: runs COMMAND with that uid and gid, and /dev/kvm's
# group so that it can create VMs.
as() {
	u=$1
	shift
	setpriv --reuid="$u" --regid="$u" --groups="$kvm_group" "$@"
}

# start UID NAMES BUSY: a fixture VMM as UID with guests NAMES (comma-
# separated), each vCPU busy BUSY percent (0: halts once, then sleeps).
start() {
	out=$work/$2.out
	as "$1" kvmreg-fixture --guests "$2" --vcpus 1 --busy "$3" \
		> "$out" 2> "$work/$2.err" &
	pids="$pids $!"
	if ! wait_for 60 grep -qx ready "$out"; then
		echo "Bail out! fixture $2 (uid $1) did not start"
		sed 's/^/# /' "$work/$2.err"
		exit 1
	fi
}

# id NAME: the VM id of fixture guest NAME.
id() { awk -v n="$1" '$1 == "guest" && $2 == n { print $4 }' "$work"/*.out; }

# stat_of FILE FIELD COLUMN: a field of kvm_stat's batch output (column
# 2 is the total, 3 the change over the batch's second).
stat_of() { awk -v f="$2" -v c="$3" '$1 == f { print $c }' "$1"; }

# not_readable PATH: the owner cannot read PATH.
not_readable() { ! as $OWNER ls "$1" > /dev/null 2>&1; }

# kvm UID NAME ARGS...: runs kvm_stat ARGS as UID (root for 0), its
# output in $work/NAME.out and .err; fails as kvm_stat does.
kvm() {
	u=$1 name=$2
	shift 2
	if [ "$u" = 0 ]; then
		kvm_stat "$@" > "$work/$name.out" 2> "$work/$name.err"
	else
		as "$u" kvm_stat "$@" > "$work/$name.out" 2> "$work/$name.err"
	fi
	rc=$?
	sed 's/^/# /' "$work/$name.err"
	return $rc
}

start $OWNER web 20
start $OWNER db 0
start $OTHER other 20
web=$(id web) db=$(id db) other=$(id other)
echo "# web: uid $OWNER, busy, VM $web; db: uid $OWNER, idle, VM $db; other: uid $OTHER, busy, VM $other"

# 1-2: the owner reads the registry without debugfs or root.
if kvm $OWNER user -r -1; then
	exits=$(stat_of "$work/user.out" exits 3)
	check "uid $OWNER: kvm_stat -r -1 shows exits moving ($exits in 1 s)" \
		[ "${exits:-0}" -gt 0 ]
	check "uid $OWNER: and no debugfs was needed (not readable)" \
		not_readable /sys/kernel/debug/kvm
else
	not_ok "uid $OWNER: kvm_stat -r -1 runs"
	not_ok "uid $OWNER: and no debugfs was needed (not readable)"
fi

# 3-4: -g takes the registry's name and restricts to that VM: the busy
# web's exits move, the idle db's do not.
if kvm $OWNER web -r -g web -1 &&
	grep -q "guest \"web\" is VM $web of pid [0-9]* (from /proc/kvm)" "$work/web.err"; then
	exits=$(stat_of "$work/web.out" exits 3)
	check "uid $OWNER: -g web is VM $web (from /proc/kvm), exits moving ($exits)" \
		[ "${exits:-0}" -gt 0 ]
else
	not_ok "uid $OWNER: -g web is VM $web (from /proc/kvm)"
fi
if kvm $OWNER db -r -g db -1 &&
	grep -q "guest \"db\" is VM $db of pid" "$work/db.err"; then
	exits=$(stat_of "$work/db.out" exits 3)
	check "uid $OWNER: -g db is VM $db, idle: exits still ($exits)" \
		[ "$exits" = 0 ]
else
	not_ok "uid $OWNER: -g db is VM $db"
fi

# 5: another user's guest is not the owner's to see.
if kvm $OWNER not-other -r -g other@$OTHER -1; then
	not_ok "uid $OWNER: -g other@$OTHER is refused"
else
	check "uid $OWNER: -g other@$OTHER is refused (not in /proc/kvm)" \
		grep -q 'No guest by the name "other@2000" in /proc/kvm' "$work/not-other.err"
fi

# 6: without -r, a user who cannot read the tracepoints gets the registry.
desc="uid $OWNER: kvm_stat -1 falls back to the registry, exits moving"
if kvm $OWNER fallback -1 -f '^exits$' &&
	grep -q "Falling back to the VM registry" "$work/fallback.err"; then
	exits=$(stat_of "$work/fallback.out" exits 3)
	check "$desc ($exits)" [ "${exits:-0}" -gt 0 ]
else
	not_ok "$desc"
fi

# 7-8: root sees others' guests as <name>@<uid>, not under the bare name.
if kvm 0 root-web -r -g web@$OWNER -1 &&
	grep -q "guest \"web@$OWNER\" is VM $web of pid" "$work/root-web.err"; then
	ok "root: -g web@$OWNER is VM $web"
else
	not_ok "root: -g web@$OWNER is VM $web"
fi
if kvm 0 root-bare -r -g web -1; then
	not_ok "root: -g web (uid $OWNER's) is refused"
else
	ok "root: -g web (uid $OWNER's) is refused"
fi

# 9: root's registry totals (-i: since each VM started) lie between two
# debugfs readings taken before and after, field by field; instant
# values (a vCPU blocking or in guest mode, pages mapped) may go both
# ways and are left out.
if kvm 0 d1 -d -i -1 && kvm 0 reg -r -i -1 && kvm 0 d2 -d -i -1; then
	verdict=$(awk '
		FILENAME ~ /d1.out$/ { d1[$1] = $2; next }
		FILENAME ~ /reg.out$/ { r[$1] = $2; next }
		{ d2[$1] = $2 }
		END {
			for (f in r) {
				if (!(f in d1) || !(f in d2) || d1[f] > d2[f] ||
				    f ~ /^(blocking|guest_mode|pages_|nx_lpage_splits|mmu_unsync)/)
					continue
				n++
				if (r[f] < d1[f] || r[f] > d2[f]) {
					bad++
					printf "# %s: debugfs %d then %d, registry %d\n", f, d1[f], d2[f], r[f]
				}
				if (f == "exits" && d2[f] > 0)
					exits = 1
			}
			printf "%d fields compared, %d outside, exits %s\n", n, bad, exits ? "in" : "missing"
		}' "$work/d1.out" "$work/reg.out" "$work/d2.out")
	echo "$verdict" | grep '^#'
	summary=$(echo "$verdict" | tail -n 1)
	case $summary in
	*" 0 outside, exits in")
		n_fields=${summary%% *}
		check "root: registry totals within debugfs' ($summary)" [ "$n_fields" -ge 20 ] ;;
	*) not_ok "root: registry totals within debugfs' ($summary)" ;;
	esac
else
	not_ok "root: kvm_stat -d -i -1 and -r -i -1 run"
fi

echo "1..$n"
