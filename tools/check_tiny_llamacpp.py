"""Cross-check models/tiny-shakespeare.gguf against a llama.cpp build (kept outside the checkout).

    /usr/bin/python3 tools/check_tiny_llamacpp.py --llamacpp /path/to/llama.cpp/build/bin \
        [--greedy-ids /path/to/greedy_ids] [--model models/tiny-shakespeare.gguf]

Checks:
  1. llama-tokenize gives the same ids as SentencePiece (models/<name>.tokenizer.model) for
     lines and paragraphs of the corpus, odd strings (spaces, newlines, digits, non-ASCII,
     text that looks like a special token) and the whole corpus as one string.
  2. with --greedy-ids (a small libllama program printing "prompt_ids: ..." and "gen_ids: ..."),
     llama.cpp's greedy ids for the prompt recorded in models/<name>.json equal PyTorch's,
     and its first-position logits are close to PyTorch's.
Exit status 0 when everything matches.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
ODD_STRINGS = [
    "", " ", "  ", "   leading spaces", "trailing spaces   ", "\n", "\n\n", " \n \n", "a\n\nb",
    "tab\there", "digits 0123456789 and 3.14159", "Führer 🦙", "naïve café — “quotes”", "日本語テキスト",
    "<s> </s> <unk> <mask>", "<0x41>", "ROMEO:\nBut soft, what light", "KING RICHARD III:\n",
    "  First Citizen:\nBefore we proceed any further, hear me speak.",
    "all:\nSpeak, speak.\n\n", "O Romeo, Romeo! wherefore art thou Romeo?", "x" * 300,
    "Hello world", " Hello world", "Hello  world", "\tHello", "\u00a0nbsp", "\x01\x7f control bytes",
]


def llama_tokenize(binary, model, text):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        out = subprocess.run([binary, "-m", model, "-f", path, "--ids", "--log-disable",
                              "--no-escape", "--no-parse-special"],
                             check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    return json.loads(out.strip().splitlines()[-1])


def check_tokenizer(args, sp, corpus):
    rng = random.Random(0)
    lines = corpus.split("\n")
    paras = corpus.split("\n\n")
    samples = [rng.choice(lines) for _ in range(60)] + \
              [rng.choice(paras) + "\n\n" for _ in range(20)] + ODD_STRINGS + [corpus]
    binary = os.path.join(args.llamacpp, "llama-tokenize")
    bad = 0
    for s in samples:
        want = [sp.bos_id()] + sp.encode(s)
        got = llama_tokenize(binary, args.model, s)
        if got != want:
            bad += 1
            print("TOKENIZER MISMATCH for %r\n  sentencepiece %s\n  llama.cpp     %s" % (s[:200], want[:50], got[:50]))
    print("tokenizer: %d/%d strings identical (the last is the whole corpus, %d tokens)" % (
        len(samples) - bad, len(samples), len(want)))
    return bad == 0


def check_greedy(args, record):
    g = record["greedy"]
    ok = True
    for kv in ("f32", "f16"):
        with tempfile.NamedTemporaryFile(suffix=".f32", delete=False) as f:
            logits_path = f.name
        out = subprocess.run([args.greedy_ids, "-q", "-m", args.model, "-n", str(len(g["ids"])),
                              "-t", "2", "-kv", kv, "-logits", logits_path, "-p", g["prompt"]],
                             check=True, capture_output=True, text=True).stdout
        fields = dict(line.split(": ", 1) for line in out.splitlines() if line[:4] in ("prom", "gen_"))
        prompt_ids = [int(t) for t in fields["prompt_ids"].split()]
        gen_ids = [int(t) for t in fields["gen_ids"].split()]
        logits = np.fromfile(logits_path, dtype="<f4")
        os.unlink(logits_path)
        diff = float(np.abs(logits - np.array(g["first_logits"], dtype=np.float32)).max())
        same = prompt_ids == g["prompt_ids"] and gen_ids == g["ids"]
        n_same = next((i for i, (a, b) in enumerate(zip(gen_ids, g["ids"])) if a != b), len(gen_ids))
        print("greedy (llama.cpp, %s KV): prompt ids %s, %d/%d generated ids identical, "
              "first logits max |diff| %.2e" % (kv, "equal" if prompt_ids == g["prompt_ids"] else "DIFFER",
                                               n_same, len(g["ids"]), diff))
        ok &= same
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llamacpp", required=True, help="llama.cpp build/bin directory")
    ap.add_argument("--greedy-ids", help="greedy-id printing program built on libllama")
    ap.add_argument("--model", default=os.path.join(HERE, "..", "models", "tiny-shakespeare.gguf"))
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "tiny_shakespeare.txt"))
    args = ap.parse_args()
    base = os.path.splitext(args.model)[0]
    sp = spm.SentencePieceProcessor(model_file=base + ".tokenizer.model")
    record = json.load(open(base + ".json"))
    corpus = open(args.data, encoding="utf-8").read()
    ok = check_tokenizer(args, sp, corpus)
    if args.greedy_ids:
        ok &= check_greedy(args, record)
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
