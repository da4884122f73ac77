# TAP helpers shared by the payload scripts; sourced, not run.
# They count points in $n, which the sourcing script starts at 0.
n=0
ok() { n=$((n + 1)); echo "ok $n $*"; }
not_ok() { n=$((n + 1)); echo "not ok $n $*"; }
# skip DESCRIPTION REASON
skip() { n=$((n + 1)); echo "ok $n $1 # SKIP $2"; }
# check DESCRIPTION COMMAND...: one point, passing if COMMAND succeeds.
check() {
	desc=$1
	shift
	if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}
# wait_for SECONDS COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
	tries=$(($1 * 10))
	shift
	while ! "$@"; do
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || return 1
		sleep 0.1
	done
}
