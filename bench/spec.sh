#!/bin/sh
# Speculative decoding on the shipped default model: acceptance, tokens per target forward and wall-clock
# speed-up over plain decoding, at batch 1 and as the batch grows.
#
#   bench/spec.sh [BATCHES]        (default "1 2 4 8 16"; THREADS=2, N=200 tokens per request)
#   M=model.gguf D=draft.gguf SKIP=4,5,6 PROSE="text" bench/spec.sh 1 4    (another model; SKIP skips the search)
#
# Modes: ar (the baseline), spec with models/tiny-shakespeare-draft.gguf, selfspec with the skip set that
# build/skipsearch picks, lookup and lookahead. Greedy (--temp 0), so every mode emits the same tokens and
# only the time differs. Lookup runs on a prompt with repetition (its drafts come from the context).
# Per mode and batch: tokens/s summed over the batch (generated tokens / longest end-to-end time), the
# speed-up over ar at the same batch, target forwards per request, tokens per forward, acceptance rate.
set -eu
cd "$(dirname "$0")/.."
BATCHES=${*:-1 2 4 8 16}
THREADS=${THREADS:-2}
N=${N:-200}
M=${M:-models/tiny-shakespeare.gguf}
D=${D:-models/tiny-shakespeare-draft.gguf}
make -s build/llmwall build/skipsearch
PROSE=${PROSE:-ROMEO:}
REPEAT="First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
"
# the best-scoring single layer that skipsearch tried (its overall pick may be "none" on a 4-layer model)
[ -n "${SKIP:-}" ] || SKIP=$(build/skipsearch -m "$M" -p "$PROSE" -n 64 -t "$THREADS" 2>/dev/null | sed -n 's/^ *skip \([0-9,]*\):.*score \([0-9.]*\).*/\2 \1/p' | sort -n | tail -n 1 | cut -d' ' -f2)
[ -n "$SKIP" ] || SKIP=1
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model $M, draft $D, selfspec skip set $SKIP (build/skipsearch), $N tokens per request, -t $THREADS"

# one line: mode batch tokens/s forwards tokens_per_forward acceptance
run() {   # $1 label, $2 batch, $3 prompt, then CLI arguments
    label=$1; b=$2; p=$3; shift 3
    build/llmwall -m "$M" -p "$p" -n "$N" --temp 0 -t "$THREADS" --json --parallel "$b" "$@" | python3 -c '
import json, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
gen = sum(r["stats"]["generated_tokens"] for r in rs)
e2e = max(r["stats"]["e2e_ms"] for r in rs)
s = rs[0]["stats"]
print("%s %d %.1f %d %.3f %.3f" % (sys.argv[1], len(rs), 1000.0 * gen / e2e, s["forwards"], s["tokens_per_forward"], s["acceptance_rate"]))
' "$label"
}

for text in prose repeat; do
    if [ $text = prose ]; then P=$PROSE; else P=$REPEAT; fi
    echo
    echo "== prompt: $text"
    printf '| mode | batch | tokens/s | speed-up over ar | forwards | tokens/forward | acceptance |\n|---|--:|--:|--:|--:|--:|--:|\n'
    for b in $BATCHES; do
        base=""
        for mode in ar spec selfspec lookup lookahead; do
            case $mode in
                ar) line=$(run ar "$b" "$P") ;;
                spec) line=$(run spec "$b" "$P" --mode spec --draft "$D") ;;
                selfspec) line=$(run "selfspec($SKIP)" "$b" "$P" --mode selfspec --skip-layers "$SKIP") ;;
                lookup) line=$(run lookup "$b" "$P" --mode lookup) ;;
                lookahead) line=$(run lookahead "$b" "$P" --mode lookahead) ;;
            esac
            set -- $line
            [ -n "$base" ] || base=$3
            printf '| %s | %s | %s | %.2fx | %s | %s | %s |\n' "$1" "$2" "$3" "$(echo "$3 / $base" | bc -l)" "$4" "$5" "$6"
        done
    done
done
