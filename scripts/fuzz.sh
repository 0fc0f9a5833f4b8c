#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 10s; CI's short form). The long
# runs are the same script with a longer FUZZTIME, e.g. FUZZTIME=10m scripts/fuzz.sh.
# A target that finds a failure fails the run; go test keeps the input under testdata/fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME="${FUZZTIME:-10s}"
GO="${GO:-go}"
failed=0
count=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pkg in $($GO list ./... | grep -v /test/); do
	dir=$($GO list -f '{{.Dir}}' "$pkg")
	grep -qs '^func Fuzz' "$dir"/*_test.go || continue
	for target in $($GO test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		count=$((count + 1))
		echo "==> $pkg $target ($FUZZTIME)"
		# The whole output of a failing target is printed (the failing input's file and the
		# test's message), the last lines of a passing one.
		# Go's fuzzing engine can fail a run with a bare "context deadline exceeded" when the
		# time ends while a worker is stalled (a loaded 2-core machine), having found nothing:
		# no failing input is written then. That run is repeated once; a found input never is.
		ok=0
		for attempt in 1 2; do
			if $GO test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 5s -parallel 2 "$pkg" >"$log" 2>&1; then
				ok=1
				break
			fi
			if grep -q 'Failing input written' "$log" || ! grep -q 'context deadline exceeded' "$log"; then
				break
			fi
			echo "($target: the fuzzing engine timed out with no failing input; once more)"
		done
		if [ "$ok" = 1 ]; then
			tail -n 3 "$log"
		else
			failed=$((failed + 1))
			tail -n 80 "$log"
			for f in $(grep -o 'testdata/fuzz/[^ ]*' "$log" | sort -u); do
				[ -f "$dir/$f" ] && { echo "--- $f"; head -c 4096 "$dir/$f"; echo; }
			done
		fi
	done
done
echo "fuzz: $count targets, $failed failed"
[ "$count" -gt 0 ] && [ "$failed" -eq 0 ]
