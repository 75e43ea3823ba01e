#!/usr/bin/python3
"""diffusion_ref.py - an independent reference for llmwall's diffusion decoding modes (tests only)

Reads a GGUF model with tools/lwgguf.py, runs the transformer forward itself in PyTorch (float64 by
default), and decodes at temperature 0 exactly as ../shared/DESIGN.md section 5 items 6 and 7 say:

  masked diffusion (--mode diffusion)   LLaDA's schedule and Fast-dLLM's threshold rule: the canvas is
      the prompt then gen_length masks; every step runs the whole canvas (no cache, full attention; with
      --cfg a second canvas with the prompt masked, logits = u + (s + 1)(c - u)); blocks of block_length
      counted from the end of the prompt, left to right; fixed steps split evenly over the blocks, each
      block's schedule fixed from its mask count m when it starts (step i: m // s, the first m % s steps
      one more), or the threshold rule (every masked position of the block with confidence >= tau, at
      least the most confident); diffusion.shift_logits: position i is predicted by row i - 1.
  block diffusion (--mode block)        for a model with diffusion.block_size B: the prompt's full blocks
      are context, a partial last prompt block is the fixed start of the first generated block; each
      step recomputes (in the simplest correct form: no cache) every committed position plus the current
      block with block attention (position p sees q iff q // B <= p // B), and unmasks by the threshold
      rule (default 0.9) or a fixed number per step; a block is decoded in full, then it becomes context.

Everywhere: x0 = argmax over the whole vocabulary (mask token included; ties to the lower id), confidence
= its softmax probability, ties in confidence to the lower position. A position whose x0 is the mask
token stays masked and is a candidate again in the block's next step. Fixed steps run exactly the
block's schedule (LLaDA: masks may be left when x0 was the mask token); the threshold rule and block
diffusion run until the block has no mask, or until a step unmasked nothing (every position it took got
the mask token: at temperature 0 the next pass would be the same, forever), which ends the block as it
is. Generation stops after a finished block whose generated positions hold an end-of-generation token
(an end token in the prompt ends nothing), or once max_tokens ids after the prompt exist; the output
ends before the first end-of-generation token and is cut to max_tokens.

Usage (run with Debian's /usr/bin/python3, which has torch and numpy):

  diffusion_ref.py MODEL.gguf --prompt 1,2,3 --mode diffusion --gen-length 32 --steps 16 --block-length 8 \
                   [--threshold T] [--cfg S] [--max-tokens N] [--eog 2,7] [--float32]
  diffusion_ref.py MODEL.gguf --prompt 1,2,3 --mode block [--threshold T | --tokens-per-step K] [--max-tokens N]
  (several runs in one process: their options separated by --then, each run printing its own line)

It prints one JSON object on one line:
  {"mode": ..., "n_prompt": P, "forwards": F,
   "states": [ after every step: masked diffusion {"canvas": [the gen_length positions after the prompt]},
               block diffusion {"pos": the block's first position, "block": [its B ids]}; both with
               "ids": [the output so far] ],
   "ids": [the final output], "finish": "stop" | "length",
   "near_ties": [ {"step": i, "kind": "argmax" | "rank" | "threshold", "margin": m}, ... ],
   "stuck": [steps after which a block ended with masks left]}
A near tie is a decision within --tie-eps (default 1e-4) of going the other way (the top-2 logit margin
of a transferred position; the log-confidence gap at the k-th place, or between log(confidence) and
log(tau)): float32 and float64 may decide it differently, so a comparison should stop before that step.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import lwgguf  # noqa: E402

ARCHS = {  # arch: (rope on halves, causal by default, shift_logits by default)
    "llama": (False, True, False),
    "qwen2": (True, True, False),
    "llada": (False, False, False),
    "dream": (True, False, True),
}


class Model:
    def __init__(self, path, dtype):
        g = lwgguf.read_gguf(path)
        md = g.metadata
        self.arch = md["general.architecture"]
        if self.arch not in ARCHS:
            raise SystemExit("diffusion_ref: architecture %r is not supported" % self.arch)
        neox, causal, shift = ARCHS[self.arch]
        a = self.arch + "."
        self.dtype = dtype
        self.n_embd = int(md[a + "embedding_length"])
        self.n_layer = int(md[a + "block_count"])
        self.n_head = int(md[a + "attention.head_count"])
        self.n_head_kv = int(md.get(a + "attention.head_count_kv", self.n_head))
        self.head_dim = int(md.get(a + "attention.key_length", self.n_embd // self.n_head))
        self.rope_dim = int(md.get(a + "rope.dimension_count", self.head_dim))
        self.rope_base = float(md.get(a + "rope.freq_base", 10000.0))
        self.eps = float(md.get(a + "attention.layer_norm_rms_epsilon", 1e-5))
        self.n_ctx = int(md[a + "context_length"])
        self.neox = neox
        self.causal = bool(md.get(a + "attention.causal", causal))
        self.shift = bool(md.get("diffusion.shift_logits", shift))
        self.block_size = int(md.get("diffusion.block_size", 0))
        self.mask = int(md["tokenizer.ggml.mask_token_id"]) if "tokenizer.ggml.mask_token_id" in md else -1
        self.eog = set()
        for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            if k in md:
                self.eog.add(int(md[k]))

        def t(name):
            return torch.from_numpy(np.array(g.tensor(name), dtype=np.float64)).to(dtype)

        def opt(name):
            return t(name) if name in g.tensor_infos else None

        self.embd = t("token_embd.weight")  # (n_vocab, n_embd)
        self.n_vocab = self.embd.shape[0]
        self.layers = []
        for i in range(self.n_layer):
            p = "blk.%d." % i
            self.layers.append({
                "attn_norm": t(p + "attn_norm.weight"),
                "wq": t(p + "attn_q.weight"), "wk": t(p + "attn_k.weight"), "wv": t(p + "attn_v.weight"),
                "bq": opt(p + "attn_q.bias"), "bk": opt(p + "attn_k.bias"), "bv": opt(p + "attn_v.bias"),
                "wo": t(p + "attn_output.weight"),
                "ffn_norm": t(p + "ffn_norm.weight"),
                "gate": t(p + "ffn_gate.weight"), "up": t(p + "ffn_up.weight"), "down": t(p + "ffn_down.weight"),
            })
        self.out_norm = t("output_norm.weight")
        self.out = opt("output.weight")
        if self.out is None:
            self.out = self.embd  # tied
        # RoPE: pair i of the rotated dimensions turns by pos * base^(-2i / rope_dim) (/ rope_freqs[i])
        i = torch.arange(self.rope_dim // 2, dtype=torch.float64)
        inv = self.rope_base ** (-2.0 * i / self.rope_dim)
        if "rope_freqs.weight" in g.tensor_infos:
            inv = inv / torch.from_numpy(np.array(g.tensor("rope_freqs.weight"), dtype=np.float64))
        self.inv_freq = inv

    def rmsnorm(self, x, w):
        return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):
        # x: (n, heads, head_dim); rotates the first rope_dim dimensions of each head
        ang = pos.to(torch.float64)[:, None] * self.inv_freq[None, :]  # (n, rope_dim/2)
        cos = torch.cos(ang).to(self.dtype)[:, None, :]
        sin = torch.sin(ang).to(self.dtype)[:, None, :]
        r, half = self.rope_dim, self.rope_dim // 2
        y = x.clone()
        if self.neox:  # pairs (i, i + rope_dim/2)
            a, b = x[..., :half], x[..., half:r]
            y[..., :half] = a * cos - b * sin
            y[..., half:r] = a * sin + b * cos
        else:  # adjacent pairs (2i, 2i + 1)
            a, b = x[..., 0:r:2], x[..., 1:r:2]
            y[..., 0:r:2] = a * cos - b * sin
            y[..., 1:r:2] = a * sin + b * cos
        return y

    def forward(self, tokens, allow):
        """tokens: n ids at positions 0..n-1; allow: (n, n) bool, allow[i, j]: row i attends to j.
        Returns the logits (n, n_vocab)."""
        n = len(tokens)
        pos = torch.arange(n)
        h = self.embd[torch.tensor(tokens, dtype=torch.long)]
        group = self.n_head // self.n_head_kv
        scale = 1.0 / np.sqrt(self.head_dim)
        neg = torch.full((n, n), float("-inf"), dtype=self.dtype)
        bias = torch.where(allow, torch.zeros((), dtype=self.dtype), neg)
        for L in self.layers:
            x = self.rmsnorm(h, L["attn_norm"])
            q, k, v = x @ L["wq"].T, x @ L["wk"].T, x @ L["wv"].T
            if L["bq"] is not None:
                q, k, v = q + L["bq"], k + L["bk"], v + L["bv"]
            q = self.rope(q.view(n, self.n_head, self.head_dim), pos)
            k = self.rope(k.view(n, self.n_head_kv, self.head_dim), pos)
            v = v.view(n, self.n_head_kv, self.head_dim)
            k = k.repeat_interleave(group, dim=1)  # query head j uses KV head j // group
            v = v.repeat_interleave(group, dim=1)
            s = torch.einsum("qhd,khd->hqk", q, k) * scale + bias[None]
            p = torch.softmax(s, dim=-1)
            o = torch.einsum("hqk,khd->qhd", p, v).reshape(n, self.n_head * self.head_dim)
            h = h + o @ L["wo"].T
            x = self.rmsnorm(h, L["ffn_norm"])
            a = x @ L["gate"].T
            h = h + ((a * torch.sigmoid(a)) * (x @ L["up"].T)) @ L["down"].T
        return self.rmsnorm(h, self.out_norm) @ self.out.T


class Decoder:
    def __init__(self, model, eog, max_tokens, eps):
        self.m = model
        self.eog = eog
        self.n = max_tokens
        self.eps = eps
        self.near = []
        self.stuck = []  # steps after which a block ended with masks left (nothing could be unmasked)
        self.forwards = 0

    def predict(self, logits_rows, step):
        """x0 and confidence of each row of logits (a (k, n_vocab) tensor, float64 numpy after)."""
        lg = logits_rows.to(torch.float64).numpy()
        x0 = np.argmax(lg, axis=1)  # the first maximum: ties to the lower id
        mx = lg.max(axis=1, keepdims=True)
        e = np.exp(lg - mx)
        conf = e[np.arange(len(x0)), x0] / e.sum(axis=1)
        top2 = np.sort(lg, axis=1)[:, -2:] if lg.shape[1] > 1 else np.concatenate([lg, lg - 1e9], axis=1)
        margin = top2[:, 1] - top2[:, 0]
        return x0, conf, margin

    def choose(self, conf, k, tau, step):
        """Indexes to unmask: the k most confident (ties to the lower index), or (k < 0) every one with
        conf >= tau and at least the most confident. Near ties are measured on log(confidence), the
        scale on which float32 logits err."""
        order = sorted(range(len(conf)), key=lambda i: (-conf[i], i))
        lc = np.log(np.maximum(conf, 1e-300))

        def gap(i, j):
            return lc[i] - lc[j]
        if k < 0:
            take = [i for i in range(len(conf)) if conf[i] >= tau]
            for i in range(len(conf)):
                if abs(lc[i] - np.log(tau)) < self.eps:
                    self.note(step, "threshold", lc[i] - np.log(tau))
            if not take:
                take = [order[0]]
                if len(order) > 1 and gap(order[0], order[1]) < self.eps:
                    self.note(step, "rank", gap(order[0], order[1]))
            return take
        k = min(k, len(conf))
        if 0 < k < len(conf) and gap(order[k - 1], order[k]) < self.eps:
            self.note(step, "rank", gap(order[k - 1], order[k]))
        return order[:k]

    def transfer(self, canvas, want, x0, conf, margin, k, tau, step):
        """Unmasks the chosen of the masked positions `want` of canvas; returns whether any of them
        received a token other than the mask itself."""
        progress = False
        for j in self.choose(conf, k, tau, step):
            canvas[want[j]] = int(x0[j])
            progress |= int(x0[j]) != self.m.mask
            if margin[j] < self.eps:
                self.note(step, "argmax", margin[j])
        return progress

    def note(self, step, kind, margin):
        self.near.append({"step": step, "kind": kind, "margin": float(margin)})

    def output(self, gen):
        out = []
        for t in gen:
            if t in self.eog:
                break
            out.append(int(t))
        return out[: self.n]


def masked_diffusion(m, prompt, a, dec):
    if m.causal or m.mask < 0:
        raise SystemExit("diffusion_ref: masked diffusion needs a bidirectional model with a mask token")
    P, G = len(prompt), a.gen_length
    L = a.block_length or G
    if G % L:
        raise SystemExit("diffusion_ref: block_length must divide gen_length")
    n_blocks = G // L
    steps = a.steps or G
    if a.threshold <= 0 and steps % n_blocks:
        raise SystemExit("diffusion_ref: steps must be a multiple of the number of blocks")
    s = steps // n_blocks
    canvas = list(prompt) + [m.mask] * G
    n = P + G
    full = torch.ones((n, n), dtype=torch.bool)
    states, finish, step = [], "length", 0
    for b in range(n_blocks):
        b0, b1 = P + b * L, P + (b + 1) * L
        cnt = sum(1 for t in canvas[b0:b1] if t == m.mask)
        sched = [cnt // s + (1 if i < cnt % s else 0) for i in range(s)]
        i = 0
        while any(t == m.mask for t in canvas[b0:b1]):
            # fixed steps: exactly the block's schedule (a step left with nothing to transfer is not run)
            if a.threshold <= 0 and (i == s or sched[i] == 0):
                break
            logits = m.forward(canvas, full)
            dec.forwards += 1
            if a.cfg > 0:
                un = [m.mask] * P + canvas[P:]
                u = m.forward(un, full)
                logits = u + (a.cfg + 1.0) * (logits - u)
            want = [t for t in range(b0, b1) if canvas[t] == m.mask]
            rows = torch.tensor([t - 1 if m.shift else t for t in want], dtype=torch.long)
            x0, conf, margin = dec.predict(logits[rows], step)
            k = -1 if a.threshold > 0 else sched[i]
            progress = dec.transfer(canvas, want, x0, conf, margin, k, a.threshold, step)
            i += 1
            step += 1
            states.append({"canvas": canvas[P:], "ids": dec.output(canvas[P:b0])})
            if a.threshold > 0 and not progress:
                dec.stuck.append(step - 1)  # a fixed point: every transfer was the mask token itself
                break
        done = canvas[P:b1]
        states[-1]["ids"] = dec.output(done)
        if any(t in dec.eog for t in canvas[b0:b1]):
            finish = "stop"
            break
        if len(done) >= dec.n:
            break
    return states, dec.output(canvas[P:]), finish


def block_diffusion(m, prompt, a, dec):
    B = m.block_size
    if B < 1 or m.mask < 0:
        raise SystemExit("diffusion_ref: block diffusion needs diffusion.block_size and a mask token")
    per_step = a.tokens_per_step
    tau = 0.0 if per_step > 0 else (a.threshold if a.threshold > 0 else 0.9)
    P = len(prompt)
    start = P // B * B
    context = list(prompt[:start])
    block = list(prompt[start:]) + [m.mask] * (B - (P - start))
    gen, states, finish, step = [], [], "length", 0
    n_ctx = a.n_ctx or m.n_ctx
    while True:
        n = start + B
        pos = torch.arange(n)
        allow = (pos[None, :] // B) <= (pos[:, None] // B)  # block attention
        while any(t == m.mask for t in block):
            logits = m.forward(context + block, allow)
            dec.forwards += 1
            want = [i for i in range(B) if block[i] == m.mask]
            x0, conf, margin = dec.predict(logits[torch.tensor([start + i for i in want], dtype=torch.long)], step)
            progress = dec.transfer(block, want, x0, conf, margin, per_step if per_step > 0 else -1, tau, step)
            step += 1
            states.append({"pos": start, "block": list(block), "ids": dec.output(gen)})
            if not progress:
                dec.stuck.append(step - 1)
                break
        new = block[max(0, P - start):]
        gen += new
        states[-1]["ids"] = dec.output(gen)
        if any(t in dec.eog for t in new):
            finish = "stop"
            break
        if len(gen) >= dec.n or start + 2 * B > n_ctx:
            break
        context += block
        start += B
        block = [m.mask] * B
    return states, dec.output(gen), finish


def ids_arg(s):
    return [int(x) for x in s.split(",") if x != ""]


def run(m, a):
    """One decoding run of parsed arguments a on model m: the JSON object of its result."""
    a.threshold = float(np.float32(a.threshold))  # the threshold as the C side holds it: a float
    eog = set(a.eog) if a.eog is not None else m.eog
    with torch.no_grad():
        if a.mode == "diffusion":
            if a.gen_length <= 0:
                a.gen_length = a.max_tokens
            if a.gen_length <= 0:
                raise SystemExit("diffusion_ref: --gen-length or --max-tokens is required")
            dec = Decoder(m, eog, a.max_tokens or a.gen_length, a.tie_eps)
            states, ids, finish = masked_diffusion(m, a.prompt, a, dec)
        else:
            dec = Decoder(m, eog, a.max_tokens or (a.n_ctx or m.n_ctx), a.tie_eps)
            states, ids, finish = block_diffusion(m, a.prompt, a, dec)
    return {"mode": a.mode, "n_prompt": len(a.prompt), "forwards": dec.forwards, "states": states,
            "ids": ids, "finish": finish, "near_ties": dec.near, "stuck": dec.stuck}


def main():
    ap = argparse.ArgumentParser(description="reference diffusion decoding at temperature 0",
                                 epilog="Several runs on one model: separate their options with --then; "
                                        "each prints its own JSON line.")
    ap.add_argument("model")
    ap.add_argument("--prompt", type=ids_arg, required=True, help="prompt ids, comma-separated")
    ap.add_argument("--mode", choices=["diffusion", "block"], required=True)
    ap.add_argument("--gen-length", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--block-length", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.0)
    ap.add_argument("--tokens-per-step", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=0.0)
    ap.add_argument("--max-tokens", type=int, default=0, help="output ids at most (default: gen length / context)")
    ap.add_argument("--n-ctx", type=int, default=0, help="the context length (default: the model's)")
    ap.add_argument("--eog", type=ids_arg, default=None, help="end-of-generation ids (default: EOS/EOT/EOM from metadata)")
    ap.add_argument("--float32", action="store_true", help="compute in float32 instead of float64")
    ap.add_argument("--tie-eps", type=float, default=1e-4)
    argv = sys.argv[1:]
    groups, cur = [], []
    for x in argv:
        if x == "--then":
            groups.append(cur)
            cur = []
        else:
            cur.append(x)
    groups.append(cur)
    torch.set_num_threads(1)
    models = {}
    for g in groups:
        a = ap.parse_args(g)
        key = (a.model, a.float32)
        if key not in models:
            models[key] = Model(a.model, torch.float32 if a.float32 else torch.float64)
        print(json.dumps(run(models[key], a), separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
