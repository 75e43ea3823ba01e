#!/bin/sh
# Diffusion decoding against autoregressive decoding, through build/bench's serve mode (the engine, the
# machine's peaks measured in the same run): tokens per forward pass, tokens/s, arithmetic intensity and
# the place on the roofline, at batch 1 and batched (closed loops of 1 and $BATCH clients).
#
#   bench/diffusion.sh shipped      the shipped models: tiny-shakespeare (ar), -mdiff, -bdiff
#   bench/diffusion.sh 110m         random-weight models of the 110M shape, the same three kinds, with an
#                                   untied output head (135M parameters; made with mkmodel)
#
# Every request: the prompt "ROMEO:" (shipped) or 16 random ids (110m), 64 generated tokens, greedy,
# ignoring end-of-generation tokens. Masked diffusion: blocks of 16, 64 steps (1 token a step), 32 steps
# (2), 16 steps (4), and the threshold 0.9; block diffusion (blocks of 16): threshold 0.9, 2 and 4
# tokens a step. THREADS (2), BATCH (8), REQUESTS (8 per run).
set -eu
cd "$(dirname "$0")/.."
WHICH=${1:-shipped}
THREADS=${THREADS:-2}
BATCH=${BATCH:-8}
REQUESTS=${REQUESTS:-8}
make -s build/bench build/mkmodel
case $WHICH in
    shipped)
        AR=models/tiny-shakespeare.gguf; MD=models/tiny-shakespeare-mdiff.gguf; BD=models/tiny-shakespeare-bdiff.gguf
        PROMPT="--prompt ROMEO:" ;;
    110m)
        d=${BENCH_MODELS:-build/bench-models}; mkdir -p "$d"
        # untied: with a random tied head the mask token's own embedding wins every masked position's
        # argmax (x0 = mask), and a diffusion step then unmasks nothing
        shape="--dim 768 --layers 12 --heads 12 --ff 2048 --ctx 2048 --vocab-from ../shared/vocab/ggml-vocab-llama-spm.gguf --type f16"
        AR=$d/llama110m-untied-f16.gguf; MD=$d/llada110m-untied-f16.gguf; BD=$d/bd16-110m-untied-f16.gguf
        [ -f "$AR" ] || build/mkmodel -o "$AR" $shape
        [ -f "$MD" ] || build/mkmodel -o "$MD" $shape --arch llada --non-causal --mask-token
        [ -f "$BD" ] || build/mkmodel -o "$BD" $shape --arch llada --non-causal --mask-token --block-size 16
        PROMPT="--prompt-len 16" ;;
    *) echo "usage: bench/diffusion.sh shipped|110m" >&2; exit 1 ;;
esac
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

run() {   # $1 label, $2 model, then bench arguments
    label=$1; m=$2; shift 2
    echo
    echo "== $label ($m)"
    build/bench -m "$m" -t "$THREADS" --mode serve --clients "1,$BATCH" --requests "$REQUESTS" --gen-len 64 $PROMPT "$@" 2>&1 |
        sed -n '/^machine\|^peak\|^bandwidth\|^ridge/p; /^| load | elapsed/,/^$/p'
}
run "autoregressive" "$AR"
for s in 64 32 16; do run "masked diffusion, $s steps" "$MD" --decode diffusion --block-length 16 --steps $s; done
run "masked diffusion, threshold 0.9" "$MD" --decode diffusion --block-length 16 --threshold 0.9
run "block diffusion, threshold 0.9" "$BD" --decode block --threshold 0.9
for k in 2 4; do run "block diffusion, $k tokens a step" "$BD" --decode block --tokens-per-step $k; done
