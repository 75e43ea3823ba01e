#!/bin/sh
# Runs every test program in $BUILD (default build/) from the repository root and sums their
# "RESULT passed=N failed=N skipped=N" lines into the closing line "N passed, N failed, N skipped".
BUILD=${BUILD:-build}
passed=0; failed=0; skipped=0; broken=""
for t in "$BUILD"/test_*; do
    [ -x "$t" ] || continue
    echo "== $t"
    out=$("$t" 2>&1); status=$?
    echo "$out" | grep -v '^ok ' 
    line=$(echo "$out" | grep '^RESULT ' | tail -n 1)
    if [ -z "$line" ]; then
        echo "   (no RESULT line: exit status $status)"
        failed=$((failed + 1)); broken="$broken $t"
        continue
    fi
    p=$(echo "$line" | sed 's/.*passed=\([0-9]*\).*/\1/')
    f=$(echo "$line" | sed 's/.*failed=\([0-9]*\).*/\1/')
    s=$(echo "$line" | sed 's/.*skipped=\([0-9]*\).*/\1/')
    if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; broken="$broken $t"; fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
[ -n "$broken" ] && echo "programs that crashed or failed outright:$broken"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
