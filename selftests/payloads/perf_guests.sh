#!/bin/sh
# perf by guest (the perf-tools series: --sample-guest-id, the KVM guest
# table in perf.data, the `guest` sort key, --guests, perf kvm
# --guest-name), run as root inside the test VM on the patched fast
# kernel with the tree's perf. Two named guests busy 60% and 20%: perf
# record samples every CPU; perf report names both guests, and their
# shares of the guest samples agree with kvmtop's guest-mode CPU of the
# same 10 s within 5 points (kvmtop reads the vCPU threads' guest time,
# so this is a second, independent account of the same run).
#
# $1: the directory holding the project's binaries (kvmreg-fixture,
# kvmtop); $2: the perf binary.
echo "TAP version 13"
bin=$1
perf=$2
. "$(dirname "$0")/tap.sh"

work=/tmp/perf-guests
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1
PATH=$bin:/usr/sbin:/usr/bin:/sbin:/bin
pids=
trap 'kill -9 $pids 2>/dev/null' EXIT

kvmreg-fixture --guests alpha --vcpus 1 --busy 60 > alpha.out 2> alpha.err &
pids="$pids $!"
kvmreg-fixture --guests beta --vcpus 1 --busy 20 > beta.out 2> beta.err &
pids="$pids $!"
for g in alpha beta; do
	wait_for 60 grep -qx ready $g.out ||
		{ echo "Bail out! fixture $g did not start"; sed 's/^/# /' $g.err; exit 1; }
done
alpha=$(awk '$1 == "guest" { print $4 }' alpha.out)
beta=$(awk '$1 == "guest" { print $4 }' beta.out)
echo "# alpha: VM $alpha, busy 60%; beta: VM $beta, busy 20%"

# 1: a 10 s system-wide recording with the guest id, kvmtop watching: its
# overview (guest-mode CPU from the vCPU threads' accounting) and a profile
# of each guest (cpu-clock every 1 ms on its vCPU threads, as perf here).
kvmtop -b -n 2 -d 10 --json > kvmtop.json 2> kvmtop.err &
kvmtop_pid=$!
kvmtop profile -g alpha -b -n 1 -d 10 --json > prof-alpha.json 2> prof-alpha.err &
prof_alpha=$!
kvmtop profile -g beta -b -n 1 -d 10 --json > prof-beta.json 2> prof-beta.err &
prof_beta=$!
pids="$pids $kvmtop_pid $prof_alpha $prof_beta"
if "$perf" record -q -a -e cpu-clock -c 1000000 --sample-guest-id \
	-o perf.data -- sleep 10 2> record.err; then
	ok "perf record -a --sample-guest-id"
else
	not_ok "perf record -a --sample-guest-id"
	sed 's/^/# /' record.err
fi
wait $kvmtop_pid $prof_alpha $prof_beta
# The run directory (the writable share) gets a copy: the harness checks on
# the host, a kernel without the registry, that perf still names the guests.
out=$(awk '$1 == "kvmreg-out" { print $2 }' /proc/mounts)
[ -n "$out" ] && cp perf.data "$out/perf-guests.data"

# 2: the header names both guests.
"$perf" report -i perf.data --header-only > header.txt 2>&1
sed -n '/kvm guests/,/^# [a-z]/p' header.txt | sed 's/^#/# header:/' | head -n 8
check "the perf.data header has the guest table: alpha as VM $alpha, beta as VM $beta" \
	sh -c "grep -q 'id $alpha, pid [0-9]*, uid 0, name alpha\$' header.txt &&
		grep -q 'id $beta, pid [0-9]*, uid 0, name beta\$' header.txt"

# 3: perf report --sort guest names both, with samples.
"$perf" report -i perf.data --sort guest -n --stdio > by-guest.txt 2> by-guest.err
grep -v '^#' by-guest.txt | grep . | sed 's/^/# report: /'
samples() { awk -v g="$1" '$NF == g { print $2 }' by-guest.txt; }
a=$(samples alpha) b=$(samples beta)
if [ "${a:-0}" -ge 100 ] && [ "${b:-0}" -ge 20 ]; then
	ok "perf report --sort guest: alpha $a and beta $b samples"
else
	not_ok "perf report --sort guest: alpha ${a:-none} and beta ${b:-none} samples"
	sed 's/^/# /' by-guest.err
fi

# 4: --guests keeps one guest's samples.
"$perf" report -i perf.data --sort guest -n --stdio --guests beta \
	> beta-only.txt 2>&1
rows=$(grep -v '^#' beta-only.txt | grep -c .)
check "perf report --guests beta: one row, beta's ($rows rows)" \
	sh -c "[ $rows = 1 ] && grep -v '^#' beta-only.txt | awk '\$NF == \"beta\"' | grep -q ."

# 5-6: the guests' shares of perf's guest samples agree, within 5 points,
# with kvmtop's profiles of the same seconds (their guest-mode samples)
# and with kvmtop's guest-mode CPU (the vCPU threads' own accounting).
# Shares, not counts: the tools' 10 s windows start a little apart.
compare() {
	python3 - "$a" "$b" "$1" <<'EOF'
import json, sys
a, b = (int(x or 0) for x in sys.argv[1:3])
def frames(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip()]
    except (OSError, ValueError):
        return []
if sys.argv[3] == 'profile':
    def guest(name):
        f = frames('prof-%s.json' % name)
        return f[-1]['guest_kernel'] + f[-1]['guest_user'] if f else None
    ka, kb = guest('alpha'), guest('beta')
    what = 'kvmtop profile samples %s and %s' % (ka, kb)
else:
    f = frames('kvmtop.json')
    pct = {g.get('name'): g.get('guest_pct') for g in (f[-1]['guests'] if f else [])}
    ka, kb = pct.get('alpha'), pct.get('beta')
    what = 'kvmtop guest CPU %s%% and %s%%' % (ka, kb)
if not (a + b) or ka is None or kb is None or not (ka + kb):
    print('no figures: perf %d and %d, %s' % (a, b, what))
    sys.exit(0)
pa, qa = a / (a + b), ka / (ka + kb)
print('alpha share: perf %.3f, kvmtop %.3f (perf %d and %d, %s)'
      % (pa, qa, a, b, what), 'ok' if abs(pa - qa) <= 0.05 else 'off')
EOF
}
verdict=$(compare profile)
check "guest shares within 5 points of kvmtop's profiles: $verdict" \
	sh -c "echo '$verdict' | grep -q ' ok\$'"
verdict=$(compare overview)
check "guest shares within 5 points of kvmtop's guest CPU: $verdict" \
	sh -c "echo '$verdict' | grep -q ' ok\$'"

# 7: perf kvm --guest-name picks the guest's VMM.
if "$perf" kvm --guest-name beta record -q -e cpu-clock -c 1000000 \
	-o kvm.data -- sleep 2 2> kvm.err; then
	beta_pid=$(awk '$1 == "guest" { print $6 }' beta.out)
	"$perf" report -i kvm.data --sort pid,guest -n --stdio > kvm.txt 2>&1
	grep -v '^#' kvm.txt | grep . | sed 's/^/# kvm report: /'
	# The pid key shows threads (tid:comm): each must be one of beta's.
	tids=$(grep -v '^#' kvm.txt | awk 'NF { sub(/:.*/, "", $3); print $3 }')
	others=0
	for t in $tids; do
		[ -d "/proc/$beta_pid/task/$t" ] || others=$((others + 1))
	done
	if [ -n "$tids" ] && [ "$others" = 0 ] &&
		grep -v '^#' kvm.txt | awk '$NF == "beta"' | grep -q .; then
		ok "perf kvm --guest-name beta record: only threads of pid $beta_pid, samples in beta"
	else
		not_ok "perf kvm --guest-name beta record: only threads of pid $beta_pid, samples in beta"
	fi
else
	not_ok "perf kvm --guest-name beta record"
	sed 's/^/# /' kvm.err
fi

# 8: an unknown name is refused.
if "$perf" kvm --guest-name nosuch record -o none.data -- true 2> nosuch.err; then
	not_ok "perf kvm --guest-name nosuch is refused"
else
	check "perf kvm --guest-name nosuch is refused, naming the name" \
		grep -q nosuch nosuch.err
fi
sed 's/^/# /' nosuch.err

echo "1..$n"
