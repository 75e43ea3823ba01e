"""Train llmwall's embedded default model and its companions on Tiny Shakespeare and export them as GGUF.

Run with Debian's interpreter, which has torch 1.13, numpy and sentencepiece (python3-torch,
python3-sentencepiece):

    /usr/bin/python3 tools/train_tiny.py                  # the AR model, ~17 min on 2 idle cores
    /usr/bin/python3 tools/train_tiny.py --model mdiff    # masked diffusion, ~6 min idle (25 min shared)
    /usr/bin/python3 tools/train_tiny.py --model bdiff    # block diffusion, ~7 min idle (20 min shared)
    /usr/bin/python3 tools/train_tiny.py --quick          # a few steps, smoke test (any --model)
    /usr/bin/python3 tools/train_tiny.py --data FILE --out-dir DIR --model ar

Steps:
  1. A SentencePiece BPE tokenizer (byte fallback, identity normalisation, dummy
     prefix, unk=0 bos=1 eos=2, a spare control token <mask>=3 for the diffusion
     models) is trained on the training part of the corpus.  Paragraphs
     (split at blank lines) are the training sentences, so "\\n" is an ordinary
     character and pieces such as ":\\n" exist.  Every model but "ar" reuses the
     shipped models/tiny-shakespeare.tokenizer.model instead, so all share the ids.
  2. The corpus is encoded as one stream (train: the first ~95%, validation:
     the rest, split at a blank line), and a model is trained on it (AdamW,
     warm-up then cosine decay, seed 1337, 2 threads).
  3. The model is exported with tools/lwgguf.py as models/<name>.gguf (matrices
     F16, vectors F32), the SentencePiece model goes to
     models/<name>.tokenizer.model ("ar" only), and a record goes to
     models/<name>.json: config, losses, wall time, and a reference run of
     PyTorch with the exported F16 weights (greedy ids and first-step logits for
     the Llamas; for the diffusion models the ids of DESIGN.md's decoding at
     temperature 0 and the logits of the first masked position at the first
     step).  tools/check_tiny_llamacpp.py cross-checks the AR export against
     llama.cpp.

Models (--model):
  ar     a Llama: RMSNorm, RoPE on adjacent pairs (x[2i], x[2i+1]), GQA, SwiGLU,
         tied output (no output.weight).  Written as GGUF arch "llama".
  draft  the same at an eighth of the parameters, the draft model of speculative
         decoding.
  mdiff  masked diffusion (LLaDA): the AR model's shape and, as the start of
         training, its weights (models/tiny-shakespeare.gguf; from random
         weights the short run stays on the unigram plateau), bidirectional, GGUF arch
         "llada" with llada.attention.causal = false and
         tokenizer.ggml.mask_token_id = 3.  Per sequence t = eps + (1-eps) u
         (eps 1e-3, stratified over the batch); each maskable token becomes
         <mask> with probability t; loss = cross-entropy of the masked positions
         weighted by 1/t, divided by the sequence's maskable positions, averaged
         over sequences.  Half the sequences are prompt-like (BOS, then text from
         a paragraph start encoded on its own, with a clean unmasked prefix of
         1..L/2 tokens, mostly short: LLaDA's fine-tuning conditioning), the rest
         stream windows; sequence lengths vary per step (32..256) so short
         canvases are in distribution.
  bdiff  block diffusion (BD3-LM), blocks of 16: as mdiff, plus
         diffusion.block_size = 16.  One pass over [x_t; x_0] (2L rows, both at
         positions 0..L-1): noisy block b attends to noisy block b and clean
         blocks < b, clean block b to clean blocks <= b -- exactly the runtime's
         block attention (a block's rows against the committed cache of the
         earlier clean blocks).  t is drawn per block (BD3-LM), unclipped in
         [eps, 1) since decoding starts every block fully masked; loss on the
         masked positions of x_t weighted by 1/t, normalised as mdiff; the same
         prompt-like half.
Each model is an entry of MODELS: a config, a loss function and an export
function (the diffusion ones also a batch sampler and a reference decoder); the
tokenizer, data, optimiser loop and GGUF writing are shared.
"""

import argparse
import io
import json
import math
import os
import re
import sys
import tempfile
import time

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lwgguf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "tiny_shakespeare.txt")
DEFAULT_OUT = os.path.join(HERE, "..", "models")

SEED = 1337
THREADS = 2

# ---------------------------------------------------------------------------
# tokenizer

TOKENIZER = dict(
    vocab_size=1024,  # 4 specials + 256 bytes + 764 characters and merges
    model_type="bpe",
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    character_coverage=1.0,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    control_symbols=["<mask>"],  # id 3; unused by the AR model
    max_sentence_length=1 << 16,
    split_digits=False,
)
MASK_TOKEN = "<mask>"


def split_corpus(text, val_fraction=0.05):
    """(train, val) text: the last ~val_fraction, starting at a paragraph boundary."""
    cut = text.find("\n\n", int(len(text) * (1 - val_fraction)))
    cut = len(text) - int(len(text) * val_fraction) if cut < 0 else cut + 2
    return text[:cut], text[cut:]


def train_tokenizer(train_text, seed=SEED):
    """Train the SentencePiece model on paragraphs of train_text; returns the processor."""
    sentences = [p + "\n\n" for p in train_text.split("\n\n") if p]
    proto = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=proto,
        num_threads=THREADS, minloglevel=2, **TOKENIZER)
    return spm.SentencePieceProcessor(model_proto=proto.getvalue()), proto.getvalue()


def token_type(sp, i):
    """GGUF token types: 1 normal, 2 unknown, 3 control, 6 byte."""
    if sp.is_unknown(i):
        return 2
    if sp.is_control(i):
        return 3
    if sp.is_byte(i):
        return 6
    return 1


def add_tokenizer_metadata(w, sp):
    n = sp.get_piece_size()
    w.add("tokenizer.ggml.model", "llama")
    w.add("tokenizer.ggml.tokens", [sp.id_to_piece(i) for i in range(n)], lwgguf.ARRAY, lwgguf.STRING)
    w.add("tokenizer.ggml.scores", [sp.get_score(i) for i in range(n)], lwgguf.ARRAY, lwgguf.FLOAT32)
    w.add("tokenizer.ggml.token_type", [token_type(sp, i) for i in range(n)], lwgguf.ARRAY, lwgguf.INT32)
    w.add("tokenizer.ggml.bos_token_id", sp.bos_id(), lwgguf.UINT32)
    w.add("tokenizer.ggml.eos_token_id", sp.eos_id(), lwgguf.UINT32)
    w.add("tokenizer.ggml.unknown_token_id", sp.unk_id(), lwgguf.UINT32)
    w.add("tokenizer.ggml.add_bos_token", True, lwgguf.BOOL)
    w.add("tokenizer.ggml.add_eos_token", False, lwgguf.BOOL)
    w.add("tokenizer.ggml.add_space_prefix", True, lwgguf.BOOL)


# ---------------------------------------------------------------------------
# Llama model


def rope_tables(head_dim, n_pos, base):
    """cos/sin of shape (n_pos, head_dim/2): pair i of position p turns by p * base^(-2i/head_dim)."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.outer(torch.arange(n_pos, dtype=torch.float64), inv)
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    """x: (B, H, T, D); rotates adjacent pairs (x[2i], x[2i+1]) as llama.cpp's normal mode."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    y0 = x0 * cos - x1 * sin
    y1 = x0 * sin + x1 * cos
    return torch.stack((y0, y1), dim=-1).flatten(-2)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.n_kv, self.hd = c["n_head"], c["n_head_kv"], c["dim"] // c["n_head"]
        d = c["dim"]
        self.attn_norm = RMSNorm(d, c["norm_eps"])
        self.wq = nn.Linear(d, self.n_head * self.hd, bias=False)
        self.wk = nn.Linear(d, self.n_kv * self.hd, bias=False)
        self.wv = nn.Linear(d, self.n_kv * self.hd, bias=False)
        self.wo = nn.Linear(self.n_head * self.hd, d, bias=False)
        self.ffn_norm = RMSNorm(d, c["norm_eps"])
        self.w_gate = nn.Linear(d, c["ffn_dim"], bias=False)
        self.w_up = nn.Linear(d, c["ffn_dim"], bias=False)
        self.w_down = nn.Linear(c["ffn_dim"], d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        rep = self.n_head // self.n_kv  # query head j uses kv head j // rep, as llama.cpp
        h = self.attn_norm(x)
        q = self.wq(h).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.wk(h).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.wv(h).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q = apply_rope(q * (1.0 / math.sqrt(self.hd)), cos, sin)
        k = apply_rope(k, cos, sin)
        # the rep query heads sharing a kv head are stacked along time: (B*n_kv, rep*T, hd)
        q = q.reshape(B * self.n_kv, rep * T, self.hd)
        k = k.reshape(B * self.n_kv, T, self.hd)
        v = v.reshape(B * self.n_kv, T, self.hd)
        if mask is None:
            att = torch.bmm(q, k.transpose(1, 2))
        else:
            att = torch.baddbmm(mask.repeat(rep, 1), q, k.transpose(1, 2))
        y = torch.bmm(F.softmax(att, dim=-1), v).view(B, self.n_head, T, self.hd)
        x = x + self.wo(y.transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.tok_embd = nn.Embedding(c["vocab_size"], c["dim"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["n_layer"]))
        self.norm = RMSNorm(c["dim"], c["norm_eps"])
        self.output = None if c["tied"] else nn.Linear(c["dim"], c["vocab_size"], bias=False)
        cos, sin = rope_tables(c["dim"] // c["n_head"], c["ctx"], c["rope_base"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        for b in self.blocks:  # GPT-2 style scaled init of the residual projections
            for lin in (b.wo, b.w_down):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * c["n_layer"]))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def hidden(self, idx, pos=None, mask=None):
        """Final-normed hidden states (B, T, dim) for rows at positions pos (default 0..T-1) under an
        additive (T, T) attention mask (None: every row sees every row)."""
        T = idx.shape[1]
        x = self.tok_embd(idx)
        cos, sin = (self.cos[:T], self.sin[:T]) if pos is None else (self.cos[pos], self.sin[pos])
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        return self.norm(x)

    def logits_of(self, h):
        return h @ (self.tok_embd.weight if self.output is None else self.output.weight).t()

    def forward(self, idx, causal=True):
        T = idx.shape[1]
        x = self.tok_embd(idx)
        mask = torch.full((T, T), float("-inf")).triu(1) if causal else None
        cos, sin = self.cos[:T], self.sin[:T]
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        x = self.norm(x)
        w = self.tok_embd.weight if self.output is None else self.output.weight
        return x @ w.t()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def greedy(model, prompt_ids, n):
    """Greedy decoding (full recompute each step); returns (ids, logits of the first step)."""
    ids, first = list(prompt_ids), None
    for _ in range(n):
        logits = model(torch.tensor([ids[-model.c["ctx"]:]]))[0, -1]
        if first is None:
            first = logits.clone()
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt_ids):], first


def export_llama(model, sp, path, name, arch="llama", extra=()):
    """GGUF with llama tensors under architecture `arch`; `extra` is (key, value, type) metadata written
    after the tokenizer's ('{arch}' in a key becomes the architecture)."""
    c = model.c
    w = lwgguf.GGUFWriter()
    w.add("general.architecture", arch)
    w.add("general.name", name)
    w.add("general.file_type", 1, lwgguf.UINT32)  # mostly F16
    for key, val in [("context_length", c["ctx"]), ("embedding_length", c["dim"]),
                     ("block_count", c["n_layer"]), ("feed_forward_length", c["ffn_dim"]),
                     ("attention.head_count", c["n_head"]), ("attention.head_count_kv", c["n_head_kv"]),
                     ("rope.dimension_count", c["dim"] // c["n_head"]), ("vocab_size", c["vocab_size"])]:
        w.add(arch + "." + key, val, lwgguf.UINT32)
    w.add(arch + ".rope.freq_base", float(c["rope_base"]), lwgguf.FLOAT32)
    w.add(arch + ".attention.layer_norm_rms_epsilon", float(c["norm_eps"]), lwgguf.FLOAT32)
    add_tokenizer_metadata(w, sp)
    for key, val, vtype in extra:
        w.add(key.replace("{arch}", arch), val, vtype)

    def mat(name, p):  # Linear weight (out, in) -> ne (in, out), F16
        w.add_tensor(name, p.detach().float().numpy(), lwgguf.F16)

    def vec(name, p):
        w.add_tensor(name, p.detach().float().numpy(), lwgguf.F32)

    mat("token_embd.weight", model.tok_embd.weight)
    for i, b in enumerate(model.blocks):
        vec("blk.%d.attn_norm.weight" % i, b.attn_norm.weight)
        mat("blk.%d.attn_q.weight" % i, b.wq.weight)
        mat("blk.%d.attn_k.weight" % i, b.wk.weight)
        mat("blk.%d.attn_v.weight" % i, b.wv.weight)
        mat("blk.%d.attn_output.weight" % i, b.wo.weight)
        vec("blk.%d.ffn_norm.weight" % i, b.ffn_norm.weight)
        mat("blk.%d.ffn_gate.weight" % i, b.w_gate.weight)
        mat("blk.%d.ffn_up.weight" % i, b.w_up.weight)
        mat("blk.%d.ffn_down.weight" % i, b.w_down.weight)
    vec("output_norm.weight", model.norm.weight)
    if model.output is not None:
        mat("output.weight", model.output.weight)
    w.write(path)


def load_llama_gguf(model, path):
    """Copy the weights of a GGUF written by export_llama (F16 matrices, F32 vectors) into model."""
    g = lwgguf.read_gguf(path)
    with torch.no_grad():
        def put(p, name):
            a = torch.from_numpy(np.ascontiguousarray(g.tensor(name)))
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError("%s: %s in %s, %s in the model" % (name, tuple(a.shape), path, tuple(p.shape)))
            p.copy_(a)
        put(model.tok_embd.weight, "token_embd.weight")
        for i, b in enumerate(model.blocks):
            for mod, n in [(b.attn_norm, "attn_norm"), (b.wq, "attn_q"), (b.wk, "attn_k"), (b.wv, "attn_v"),
                           (b.wo, "attn_output"), (b.ffn_norm, "ffn_norm"), (b.w_gate, "ffn_gate"),
                           (b.w_up, "ffn_up"), (b.w_down, "ffn_down")]:
                put(mod.weight, "blk.%d.%s.weight" % (i, n))
        put(model.norm.weight, "output_norm.weight")
        if model.output is not None:
            put(model.output.weight, "output.weight")


def round_to_export(model):
    """Round every matrix to F16 in place, so PyTorch computes with the exported weights."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())


# ---------------------------------------------------------------------------
# training (shared by all models)


def lr_at(step, t):
    """Linear warm-up, then cosine decay to min_lr."""
    if step < t["warmup"]:
        return t["lr"] * (step + 1) / t["warmup"]
    r = (step - t["warmup"]) / max(1, t["steps"] - t["warmup"])
    return t["min_lr"] + 0.5 * (t["lr"] - t["min_lr"]) * (1 + math.cos(math.pi * min(1.0, r)))


def make_optimizer(model, t):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                              {"params": other, "weight_decay": 0.0}],
                             lr=t["lr"], betas=(0.9, 0.95), eps=1e-8)


def get_batch(data, batch, seq, gen):
    ix = torch.randint(len(data) - seq - 1, (batch,), generator=gen)
    x = torch.stack([data[i:i + seq] for i in ix.tolist()])
    y = torch.stack([data[i + 1:i + 1 + seq] for i in ix.tolist()])
    return x, y


@torch.no_grad()
def eval_loss(model, loss_fn, data, seq, max_windows=None, batch=16):
    """Mean loss (nats/token) over consecutive windows of data, evenly spaced if capped."""
    model.eval()
    n = (len(data) - 1) // seq
    starts = [i * seq for i in range(n)]
    if max_windows and n > max_windows:
        starts = [starts[int(k * n / max_windows)] for k in range(max_windows)]
    tot, cnt = 0.0, 0
    for j in range(0, len(starts), batch):
        s = starts[j:j + batch]
        x = torch.stack([data[i:i + seq] for i in s])
        y = torch.stack([data[i + 1:i + 1 + seq] for i in s])
        tot += loss_fn(model, x, y).item() * y.numel()
        cnt += y.numel()
    model.train()
    return tot / cnt


def train(model, loss_fn, train_ids, val_ids, t, log, batch_fn=None, eval_fn=None):
    """AdamW over t["steps"] batches.  batch_fn(gen) -> the loss function's arguments after the model
    (default: an autoregressive (x, y) batch of train_ids); eval_fn(model, ids, max_windows) -> mean loss."""
    if batch_fn is None:
        batch_fn = lambda gen: get_batch(train_ids, t["batch"], t["seq"], gen)  # noqa: E731
    if eval_fn is None:
        eval_fn = lambda m, ids, max_windows: eval_loss(m, loss_fn, ids, t["seq"], max_windows=max_windows)  # noqa: E731
    gen = torch.Generator().manual_seed(SEED)
    opt = make_optimizer(model, t)
    t0 = time.time()
    for step in range(t["steps"]):
        lr = lr_at(step, t)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_fn(model, *batch_fn(gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        if step % t["log_every"] == 0 or step == t["steps"] - 1:
            el = time.time() - t0
            msg = "step %5d/%d  loss %.4f  lr %.2e  %.0fs (%.3fs/step)" % (
                step, t["steps"], loss.item(), lr, el, el / (step + 1))
            if t["eval_every"] and step and step % t["eval_every"] == 0:
                msg += "  val %.4f" % eval_fn(model, val_ids, 32)
            log(msg)
    return time.time() - t0


def ar_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))


# ---------------------------------------------------------------------------
# diffusion models: masked diffusion (LLaDA) and block diffusion (BD3-LM)
#
# Both are the Llama above run without the causal mask, with the control token <mask> (id 3) as the
# noise: x_t replaces each token of x_0 by <mask> with probability t.  The loss is the cross-entropy of
# x_0 at the masked positions weighted by 1/t (the ELBO of the linear schedule, an upper bound on the
# negative log-likelihood per token), summed over a sequence and divided by its number of maskable
# positions, then averaged over the sequences (LLaDA's normalisation).

DIFF_EPS = 1e-3  # the smallest mask ratio: t = eps + (1 - eps) u, u uniform, as LLaDA's p_mask


def strat_t(n, gen):
    """n mask ratios in [eps, 1), stratified (one uniform offset, n evenly spaced points, shuffled): each
    is uniform, and a batch covers the range evenly (MDLM's and BD3-LM's antithetic sampling)."""
    u = torch.rand(1, generator=gen)
    r = ((torch.arange(n, dtype=torch.float64) + u.double()) / n)[torch.randperm(n, generator=gen)]
    return (DIFF_EPS + (1 - DIFF_EPS) * r).float()


class DiffusionBatches:
    """Training batches (x0, masked, weight) of the diffusion models.

    A fraction t["prompted"] of the sequences are prompt-like: BOS, then the text from the start of a
    random paragraph encoded on its own (so it begins with the dummy prefix, as an encoded prompt does),
    of which the first p tokens (BOS included) are a clean prefix: never masked, no loss.  p is
    1 + floor(L/2 * v^2), v uniform: mostly short, as prompts are, up to half the sequence.  The other
    sequences are windows of the training stream with every position maskable.  This is LLaDA's
    supervised-fine-tuning conditioning (the prompt left unmasked) mixed into pre-training, so that a
    prompt at position 0 after BOS is in distribution.

    Masked diffusion (block_size 0) draws one t per sequence and, per step, a sequence length L among
    the multiples of 16 in [t["min_seq"], t["seq"]] with t["tokens"] // L sequences, so that canvases
    shorter than the context are in distribution too.  Block diffusion draws one t per block of every
    sequence (BD3-LM) at the fixed length t["seq"], t["batch"] sequences."""

    def __init__(self, sp, text, ids, t, block_size):
        self.sp, self.text, self.ids, self.t, self.bs = sp, text, ids, t, block_size
        margin = 16 * t["seq"]  # characters: a prompt-like sequence never runs out of text
        self.paragraphs = [m.end() for m in re.finditer("\n\n", text) if m.end() < len(text) - margin]

    def _prompted(self, L, gen):
        c = self.paragraphs[int(torch.randint(len(self.paragraphs), (1,), generator=gen))]
        ids = self.sp.encode(self.text[c:c + 8 * L])[:L - 1]
        assert len(ids) == L - 1
        v = float(torch.rand(1, generator=gen))
        return [self.sp.bos_id()] + ids, 1 + int(L // 2 * v * v)

    def __call__(self, gen):
        t = self.t
        if self.bs:
            L, B = t["seq"], t["batch"]
        else:
            lengths = list(range(t["min_seq"], t["seq"] + 1, 16))
            L = lengths[int(torch.randint(len(lengths), (1,), generator=gen))]
            B = t["tokens"] // L
        rows, prefix = [], []
        for _ in range(B):
            if float(torch.rand(1, generator=gen)) < t["prompted"]:
                r, p = self._prompted(L, gen)
            else:
                i = int(torch.randint(len(self.ids) - L, (1,), generator=gen))
                r, p = self.ids[i:i + L].tolist(), 0
            rows.append(r)
            prefix.append(p)
        return diffusion_noise(torch.tensor(rows), torch.tensor(prefix), self.bs, gen)


def diffusion_noise(x0, prefix, block_size, gen):
    """(x0, masked, weight): t per sequence (block_size 0) or per block; position j of sequence i is
    masked with probability t unless j < prefix[i]; weight = 1 / (t * maskable positions)."""
    B, L = x0.shape
    if block_size:
        t = strat_t(B * (L // block_size), gen).view(B, -1).repeat_interleave(block_size, dim=1)
    else:
        t = strat_t(B, gen)[:, None].expand(B, L)
    maskable = torch.arange(L)[None, :] >= prefix[:, None]
    masked = (torch.rand(B, L, generator=gen) < t) & maskable
    weight = 1.0 / (t * maskable.sum(1, keepdim=True).float())
    return x0, masked, weight


def mdiff_loss(model, x0, masked, weight):
    """LLaDA: full attention over x_t; loss on the masked positions."""
    xt = torch.where(masked, torch.full_like(x0, model.c["mask_token_id"]), x0)
    logits = model.logits_of(model.hidden(xt)[masked])
    ce = F.cross_entropy(logits, x0[masked], reduction="none")
    return (ce * weight[masked]).sum() / x0.shape[0]


_BDIFF_MASKS = {}


def bdiff_mask(L, bs):
    """Additive (2L, 2L) attention mask over the rows [x_t; x_0] (both at positions 0..L-1), for blocks
    of bs positions: noisy block b sees noisy block b (all of it) and clean blocks < b; clean block b
    sees clean blocks <= b; nothing sees a noisy block of another block.  The runtime's block diffusion
    is exactly this: a block's rows under LW_MASK_BLOCK (its own block in full) against the committed
    cache of the clean earlier blocks, themselves computed under the same block mask."""
    if (L, bs) not in _BDIFF_MASKS:
        blk = torch.arange(L) // bs
        allow = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
        allow[:L, :L] = blk[:, None] == blk[None, :]
        allow[:L, L:] = blk[None, :] < blk[:, None]
        allow[L:, L:] = blk[None, :] <= blk[:, None]
        _BDIFF_MASKS[(L, bs)] = torch.zeros(2 * L, 2 * L).masked_fill(~allow, float("-inf"))
    return _BDIFF_MASKS[(L, bs)]


def block_mask(T, bs):
    """Additive (T, T) mask of LW_MASK_BLOCK: row i sees row j when j's block <= i's block."""
    blk = torch.arange(T) // bs
    return torch.zeros(T, T).masked_fill(blk[None, :] > blk[:, None], float("-inf"))


def bdiff_loss(model, x0, masked, weight):
    """BD3-LM: one pass over [x_t; x_0] (2L rows, positions repeated) under bdiff_mask; loss on the
    masked positions of x_t."""
    L, bs = x0.shape[1], model.c["block_size"]
    xt = torch.where(masked, torch.full_like(x0, model.c["mask_token_id"]), x0)
    pos = torch.cat((torch.arange(L), torch.arange(L)))
    h = model.hidden(torch.cat((xt, x0), dim=1), pos, bdiff_mask(L, bs))[:, :L]
    logits = model.logits_of(h[masked])
    ce = F.cross_entropy(logits, x0[masked], reduction="none")
    return (ce * weight[masked]).sum() / x0.shape[0]


@torch.no_grad()
def diffusion_eval(model, loss_fn, ids, seq, block_size, max_windows=None, batch=16):
    """The model's own objective (nats/token, an upper bound on the NLL) over consecutive windows of ids,
    evenly spaced if capped, every position maskable, t stratified over all windows (or blocks) from a
    fixed seed: the same masks on every call."""
    model.eval()
    n = (len(ids) - 1) // seq
    starts = [i * seq for i in range(n)]
    if max_windows and n > max_windows:
        starts = [starts[int(k * n / max_windows)] for k in range(max_windows)]
    gen = torch.Generator().manual_seed(SEED + 1)
    x0 = torch.stack([ids[i:i + seq] for i in starts])
    x0, masked, weight = diffusion_noise(x0, torch.zeros(len(starts), dtype=torch.long), block_size, gen)
    tot = 0.0
    for j in range(0, len(starts), batch):
        s = slice(j, j + batch)
        tot += loss_fn(model, x0[s], masked[s], weight[s]).item() * x0[s].shape[0]
    model.train()
    return tot / len(starts)


def diffusion_x0(logits):
    """Argmax over the whole vocabulary (ties to the lower id) and its softmax probability."""
    p = F.softmax(logits.double(), dim=-1)
    x0 = torch.argmax(logits, dim=-1)
    return x0, p.gather(-1, x0[..., None])[..., 0]


def choose(conf, k=None, tau=None):
    """Indices to transfer: the k most confident, or every one with conf >= tau and at least the most
    confident; ties to the lower index."""
    order = sorted(range(len(conf)), key=lambda i: (-float(conf[i]), i))
    if k is not None:
        return order[:k]
    return [i for i in order if float(conf[i]) >= tau] or order[:1]


@torch.no_grad()
def mdiff_reference(model, prompt_ids, gen_length, steps, block_length):
    """DESIGN.md §5.6 at temperature 0, low_confidence, fixed steps (no guidance, no EOS in this model's
    training data so no stop): (generated ids, forwards, logits of the first masked position at step 1)."""
    mask = model.c["mask_token_id"]
    P, nb = len(prompt_ids), gen_length // block_length
    canvas = list(prompt_ids) + [mask] * gen_length
    s, forwards, first = steps // nb, 0, None
    for b in range(nb):
        lo = P + b * block_length
        m = canvas[lo:lo + block_length].count(mask)
        sched = [m // s + (i < m % s) for i in range(s)]
        for i in range(s):
            want = [p for p in range(lo, lo + block_length) if canvas[p] == mask]
            if not want:
                break
            logits = model.logits_of(model.hidden(torch.tensor([canvas]))[0, want])
            forwards += 1
            if first is None:
                first = logits[0].clone()
            x0, conf = diffusion_x0(logits)
            for j in choose(conf, k=sched[i]):
                canvas[want[j]] = int(x0[j])
    return canvas[P:], forwards, first


@torch.no_grad()
def bdiff_reference(model, prompt_ids, n, tau):
    """DESIGN.md §5.7 at temperature 0 with the threshold rule, recomputing the context each step (the
    runtime caches it; same attention): (generated ids, refinement forwards, logits of the first masked
    position at the first step)."""
    mask, B = model.c["mask_token_id"], model.c["block_size"]
    P = len(prompt_ids)
    start = P // B * B
    ctx, canvas = list(prompt_ids[:start]), list(prompt_ids[start:]) + [mask] * (B - P + start)
    out, forwards, first = [], 0, None
    while True:
        while mask in canvas:
            want = [i for i in range(B) if canvas[i] == mask]
            seq = ctx + canvas
            h = model.hidden(torch.tensor([seq]), mask=block_mask(len(seq), B))[0, start:]
            logits = model.logits_of(h[want])
            forwards += 1
            if first is None:
                first = logits[0].clone()
            x0, conf = diffusion_x0(logits)
            for j in choose(conf, tau=tau):
                canvas[want[j]] = int(x0[j])
        out += canvas[max(0, P - start):]
        if len(out) >= n or start + 2 * B > model.c["ctx"]:
            break
        ctx += canvas
        start += B
        canvas = [mask] * B
    return out[:n], forwards, first


def export_mdiff(model, sp, path, name):
    export_llama(model, sp, path, name, arch="llada", extra=[
        ("{arch}.attention.causal", False, lwgguf.BOOL),
        ("tokenizer.ggml.mask_token_id", model.c["mask_token_id"], lwgguf.UINT32)])


def export_bdiff(model, sp, path, name):
    export_llama(model, sp, path, name, arch="llada", extra=[
        ("{arch}.attention.causal", False, lwgguf.BOOL),
        ("tokenizer.ggml.mask_token_id", model.c["mask_token_id"], lwgguf.UINT32),
        ("diffusion.block_size", model.c["block_size"], lwgguf.UINT32)])


REFERENCE_PROMPT = "ROMEO:"
REFERENCE = dict(gen_length=64, steps=64, block_length=16, threshold=0.9)


def mdiff_record(model, prompt_ids):
    r = REFERENCE
    ids, forwards, first = mdiff_reference(model, prompt_ids, r["gen_length"], r["steps"], r["block_length"])
    return ids, first, dict(mode="diffusion", gen_length=r["gen_length"], steps=r["steps"],
                            block_length=r["block_length"], remasking="low_confidence", forwards=forwards)


def bdiff_record(model, prompt_ids):
    r = REFERENCE
    ids, forwards, first = bdiff_reference(model, prompt_ids, r["gen_length"], r["threshold"])
    return ids, first, dict(mode="block", n=r["gen_length"], threshold=r["threshold"], forwards=forwards,
                            tokens_per_forward=round(len(ids) / forwards, 3))


# ---------------------------------------------------------------------------
# model registry

# Sized on this 2-core machine (unloaded: ~1.1 s/step for 16 x 256 tokens): five-minute trials
# had dim 192 / 4 layers reach val 3.90 where dim 256 / 5 layers (4.0M params, 2.3 s/step)
# reached 4.37 and dim 192 / 6 layers 4.2, so the small model trained longer wins here.
AR_CONFIG = dict(dim=192, n_layer=4, n_head=3, n_head_kv=1, ffn_dim=512, ctx=256,
                 norm_eps=1e-5, rope_base=10000.0, tied=True)
AR_TRAIN = dict(steps=900, batch=16, seq=256, lr=2e-3, min_lr=2e-4, warmup=50,
                weight_decay=0.1, grad_clip=1.0, log_every=25, eval_every=150)

# The draft model for speculative decoding: the same vocabulary (the shipped tokenizer, reused rather
# than retrained, so the ids are the same by construction) and about an eighth of the target's
# parameters, so one draft step costs a fraction of a target step.
DRAFT_CONFIG = dict(dim=96, n_layer=2, n_head=3, n_head_kv=1, ffn_dim=256, ctx=256,
                    norm_eps=1e-5, rope_base=10000.0, tied=True)
DRAFT_TRAIN = dict(AR_TRAIN, steps=900, lr=3e-3, min_lr=3e-4)

# The diffusion models: the AR model's shape and vocabulary (the shipped tokenizer, whose control token
# <mask> = 3 was reserved for them), bidirectional.  Masked diffusion sees t["tokens"] tokens per step
# in sequences of 32..256; block diffusion sees 8 sequences of 256 as 512 rows ([x_t; x_0]), so both
# cost about an AR step's 4096 rows.  Block size 16: a block is about a line of verse (~2.5 characters
# per token), it is the block length the masked model is shown with, and it leaves room for several
# tokens per forward; BD3-LM's likelihood is only a little worse at 16 than at 8.
# Both start from the shipped AR model's weights (init_from, read back from its GGUF) and are adapted
# to their objective, as DiffuLLaMA and Dream adapt AR models: from random weights, 300 masked-diffusion
# steps stayed on the unigram plateau (val 6.05 nats; unigram 5.87), because a masked position carries
# no information until attention has learnt to fetch its neighbours, while from the AR weights the
# loss at 15% masking was below 4.8 after 75 steps.
MDIFF_CONFIG = dict(AR_CONFIG, mask_token_id=3)
MDIFF_TRAIN = dict({k: v for k, v in AR_TRAIN.items() if k != "batch"}, steps=400, lr=1e-3, min_lr=1e-4,
                   warmup=25, tokens=4096, min_seq=32, prompted=0.5, init_from="tiny-shakespeare.gguf")
BDIFF_CONFIG = dict(AR_CONFIG, mask_token_id=3, block_size=16)
BDIFF_TRAIN = dict(AR_TRAIN, steps=400, lr=1e-3, min_lr=1e-4, warmup=25, batch=8, prompted=0.5,
                   init_from="tiny-shakespeare.gguf")

MODELS = {
    "ar": dict(name="tiny-shakespeare", config=AR_CONFIG, train=AR_TRAIN,
               build=Llama, loss=ar_loss, export=export_llama),
    "draft": dict(name="tiny-shakespeare-draft", config=DRAFT_CONFIG, train=DRAFT_TRAIN,
                  build=Llama, loss=ar_loss, export=export_llama,
                  tokenizer_from="tiny-shakespeare.tokenizer.model"),
    "mdiff": dict(name="tiny-shakespeare-mdiff", config=MDIFF_CONFIG, train=MDIFF_TRAIN, arch="llada",
                  build=Llama, loss=mdiff_loss, export=export_mdiff, reference=mdiff_record,
                  tokenizer_from="tiny-shakespeare.tokenizer.model"),
    "bdiff": dict(name="tiny-shakespeare-bdiff", config=BDIFF_CONFIG, train=BDIFF_TRAIN, arch="llada",
                  build=Llama, loss=bdiff_loss, export=export_bdiff, reference=bdiff_record,
                  tokenizer_from="tiny-shakespeare.tokenizer.model"),
}

DIFFUSION_LOSS_NOTE = ("the model's own objective in nats per token (cross-entropy of the masked positions "
                       "weighted by 1/t, per maskable position: an upper bound on the NLL), F16-rounded weights, "
                       "consecutive windows of seq tokens with every position maskable and t stratified "
                       "from a fixed seed; train loss over evenly spaced training windows as many as the "
                       "validation set has")

GREEDY_PROMPT = "ROMEO:\nBut soft, what light"
GREEDY_TOKENS = 64


def write_record(path, record):
    """JSON with one key per line but each list of numbers on one line."""
    text = json.dumps(record, indent=1)
    text = re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    with open(path, "w") as f:
        f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ar", choices=sorted(MODELS))
    ap.add_argument("--data", default=DEFAULT_DATA, help="training corpus (UTF-8 text)")
    ap.add_argument("--out-dir", help="default: models/ (--quick: a temporary directory)")
    ap.add_argument("--quick", action="store_true", help="a few steps only, for smoke tests")
    ap.add_argument("--steps", type=int, help="override the number of training steps")
    ap.add_argument("--save-checkpoint", action="store_true", help="also write <name>.pt (not committed)")
    args = ap.parse_args()

    wall0, cpu0 = time.time(), time.process_time()
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(THREADS)
    spec = MODELS[args.model]
    cfg, tcfg = dict(spec["config"]), dict(spec["train"])
    name = spec["name"] + ("-quick" if args.quick else "")
    if args.quick:
        tcfg.update(steps=8, warmup=2, log_every=1, eval_every=0)
    if args.steps:
        tcfg["steps"] = args.steps
    if args.out_dir is None:
        args.out_dir = tempfile.mkdtemp(prefix="train_tiny-") if args.quick else DEFAULT_OUT
    os.makedirs(args.out_dir, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    text = open(args.data, encoding="utf-8").read()
    train_text, val_text = split_corpus(text)
    t0 = time.time()
    if spec.get("tokenizer_from"):  # the shipped vocabulary, shared with the model this one serves
        with open(os.path.join(DEFAULT_OUT, spec["tokenizer_from"]), "rb") as f:
            sp_proto = f.read()
        sp = spm.SentencePieceProcessor(model_proto=sp_proto)
        log("tokenizer: %d pieces from models/%s" % (sp.get_piece_size(), spec["tokenizer_from"]))
    else:
        sp, sp_proto = train_tokenizer(train_text)
        with open(os.path.join(args.out_dir, spec["name"] + ".tokenizer.model"), "wb") as f:
            f.write(sp_proto)  # the SentencePiece model, for Python reference tests and later models
        log("tokenizer: %d pieces in %.1fs" % (sp.get_piece_size(), time.time() - t0))
    train_ids = torch.tensor(sp.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(sp.encode(val_text), dtype=torch.long)
    log("data: %d chars -> %d train tokens, %d chars -> %d val tokens" % (
        len(train_text), len(train_ids), len(val_text), len(val_ids)))

    cfg["vocab_size"] = sp.get_piece_size()
    diffusion = "mask_token_id" in cfg
    if diffusion and cfg["mask_token_id"] != sp.piece_to_id(MASK_TOKEN):
        sys.exit("the tokenizer's %s is %d, not %d" % (MASK_TOKEN, sp.piece_to_id(MASK_TOKEN), cfg["mask_token_id"]))
    model = spec["build"](cfg)
    if tcfg.get("init_from"):
        load_llama_gguf(model, os.path.join(DEFAULT_OUT, tcfg["init_from"]))
        log("initialised from models/%s" % tcfg["init_from"])
    log("model %s: %s, %d parameters" % (args.model, cfg, n_params(model)))
    log("train: %s" % tcfg)
    loss_fn, seq = spec["loss"], tcfg["seq"]
    batch_fn = eval_fn = None
    if diffusion:
        batch_fn = DiffusionBatches(sp, train_text, train_ids, tcfg, cfg.get("block_size", 0))
        eval_fn = lambda m, ids, max_windows: diffusion_eval(  # noqa: E731
            m, loss_fn, ids, seq, cfg.get("block_size", 0), max_windows=max_windows)
    train_time = train(model, loss_fn, train_ids, val_ids, tcfg, log, batch_fn=batch_fn, eval_fn=eval_fn)

    round_to_export(model)
    model.eval()
    if eval_fn is None:
        eval_fn = lambda m, ids, max_windows: eval_loss(m, loss_fn, ids, seq, max_windows=max_windows)  # noqa: E731
    train_loss = eval_fn(model, train_ids, (len(val_ids) - 1) // seq)
    val_loss = eval_fn(model, val_ids, None)
    log("final (F16-rounded weights): train loss %.4f  val loss %.4f nats/token" % (train_loss, val_loss))

    gguf_path = os.path.join(args.out_dir, name + ".gguf")
    spec["export"](model, sp, gguf_path, name)
    if diffusion:
        prompt_ids = [sp.bos_id()] + sp.encode(REFERENCE_PROMPT)
        gen_ids, first_logits, how = spec["reference"](model, prompt_ids)
        sample = sp.decode(gen_ids)
        log("reference sample (%s):\n%s%s" % (how, REFERENCE_PROMPT, sample))
    else:
        prompt_ids = [sp.bos_id()] + sp.encode(GREEDY_PROMPT)
        gen_ids, first_logits = greedy(model, prompt_ids, GREEDY_TOKENS)
        sample = sp.decode(gen_ids)
        log("greedy sample:\n%s%s" % (GREEDY_PROMPT, sample))
    if args.save_checkpoint:
        torch.save({"config": cfg, "model": model.state_dict()}, os.path.join(args.out_dir, name + ".pt"))

    record = {
        "name": name,
        "model": args.model,
        "architecture": spec.get("arch", "llama"),
        "config": cfg,
        "parameters": n_params(model),
        "train": tcfg,
        "seed": SEED,
        "threads": THREADS,
        "torch_version": torch.__version__,
        "sentencepiece_version": spm.__version__,
        "corpus": os.path.basename(args.data),
        "corpus_chars": len(text),
        "split": {"train_chars": len(train_text), "val_chars": len(val_text),
                  "train_tokens": len(train_ids), "val_tokens": len(val_ids)},
        "tokenizer": dict({k: v for k, v in TOKENIZER.items()}, pieces=sp.get_piece_size(),
                          mask_token_id=sp.piece_to_id(MASK_TOKEN)),
        "final_train_loss": round(train_loss, 4),
        "final_val_loss": round(val_loss, 4),
        "loss_note": DIFFUSION_LOSS_NOTE if diffusion else
                     "cross-entropy in nats per token, F16-rounded weights; train loss over "
                     "evenly spaced training windows as many as the validation set has",
        "steps": tcfg["steps"],
        "train_seconds": round(train_time, 1),
        "seconds_per_step": round(train_time / tcfg["steps"], 3),
        "wall_seconds": round(time.time() - wall0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "gguf": os.path.basename(gguf_path),
        "gguf_bytes": os.path.getsize(gguf_path),
    }
    if diffusion:
        record["reference"] = dict(how, prompt=REFERENCE_PROMPT, prompt_ids=prompt_ids, ids=gen_ids, text=sample,
                                   note="PyTorch float32 with the exported (F16) weights, temperature 0; "
                                        "first_logits: the first masked position at the first step",
                                   first_logits=[round(float(v), 5) for v in first_logits])
    else:
        record["greedy"] = {
            "prompt": GREEDY_PROMPT,
            "prompt_ids": prompt_ids,
            "ids": gen_ids,
            "text": sample,
            "note": "PyTorch float32 with the exported (F16) weights, argmax at each step",
            "first_logits": [round(float(v), 5) for v in first_logits],
        }
    write_record(os.path.join(args.out_dir, name + ".json"), record)
    log("wrote %s (%d bytes) in %.0fs total" % (gguf_path, record["gguf_bytes"], record["wall_seconds"]))


if __name__ == "__main__":
    main()
