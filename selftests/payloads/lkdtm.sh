#!/bin/sh
# The `lkdtm` suite: provokes real kernel reports through LKDTM (debug
# kernel only) so that the harness's splat detection is tested end to end.
# Every point here passes; the run must still fail, on the console scan.
echo "TAP version 13"
echo "1..2"
direct=/sys/kernel/debug/provoke-crash/DIRECT
if [ ! -w "$direct" ]; then
	echo "Bail out! $direct is missing: LKDTM needs the debug config"
	exit 1
fi
n=0
for crash in WARNING READ_AFTER_FREE; do
	n=$((n + 1))
	if echo "$crash" > "$direct"; then
		echo "ok $n provoked $crash"
	else
		echo "not ok $n provoked $crash"
	fi
done
