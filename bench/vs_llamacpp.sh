#!/bin/sh
# Decode and prefill speed of llmwall against llama.cpp's llama-bench on the same GGUF files, in one run.
#
#   LLAMA_BENCH=/path/to/llama.cpp/build/bin/llama-bench bench/vs_llamacpp.sh [types...]
#
# llama.cpp is built outside this checkout (from a fetched snapshot); this script only runs it.
# Models: a random-weight Llama of 110M parameters (dim 768, 12 layers, 12 heads, FFN 2048, the 32000-token
# llama-spm vocabulary, tied output) written by build/mkmodel into $MODELS (default /tmp/llmwall-bench).
# For each type: llama-bench -t 2 -p 128 -n 64 (3 reps), then build/llmwall -t 2 -n 64 --json (3 runs,
# tokens_per_s = decode speed), then build/bench (prefill, decode and bandwidth fraction).
set -eu
cd "$(dirname "$0")/.."
TYPES=${*:-f16 q8_0}
MODELS=${MODELS:-/tmp/llmwall-bench}
THREADS=${THREADS:-2}
: "${LLAMA_BENCH:?set LLAMA_BENCH to llama.cpp's llama-bench}"
make -s build/llmwall build/mkmodel build/bench
mkdir -p "$MODELS"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for t in $TYPES; do
    m="$MODELS/llama110m-$t.gguf"
    [ -f "$m" ] || build/mkmodel -o "$m" --dim 768 --layers 12 --heads 12 --ff 2048 --ctx 2048 \
        --vocab-from ../shared/vocab/ggml-vocab-llama-spm.gguf --type "$t" --tied
    echo "== $t: llama.cpp"
    "$LLAMA_BENCH" -m "$m" -t "$THREADS" -p 128 -n 64 -r 3 2>/dev/null | grep -E "pp128|tg64"
    echo "== $t: build/llmwall -t $THREADS -n 64 --temp 0 --json (tokens_per_s)"
    for i in 1 2 3; do
        build/llmwall -m "$m" -t "$THREADS" -p "Once upon a time" -n 64 --temp 0 --json | sed 's/.*"tokens_per_s":\([0-9.]*\).*/\1/'
    done
    echo "== $t: build/bench"
    build/bench -m "$m" -t "$THREADS" -r 3 | tail -3
done
