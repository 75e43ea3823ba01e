"""Train llmwall's embedded default model on Tiny Shakespeare and export it as GGUF.

Run with Debian's interpreter, which has torch 1.13, numpy and sentencepiece:

    /usr/bin/python3 tools/train_tiny.py                  # full run, ~17 min on 2 idle cores
    /usr/bin/python3 tools/train_tiny.py --quick          # a few steps, smoke test
    /usr/bin/python3 tools/train_tiny.py --data FILE --out-dir DIR --model ar

Steps:
  1. A SentencePiece BPE tokenizer (byte fallback, identity normalisation, dummy
     prefix, unk=0 bos=1 eos=2, a spare control token <mask>=3 for the diffusion
     models to come) is trained on the training part of the corpus.  Paragraphs
     (split at blank lines) are the training sentences, so "\\n" is an ordinary
     character and pieces such as ":\\n" exist.
  2. The corpus is encoded as one stream (train: the first ~95%, validation:
     the rest, split at a blank line), and a model is trained on it.
  3. The model is exported with tools/lwgguf.py as models/<name>.gguf, the
     SentencePiece model goes to models/<name>.tokenizer.model, and a record
     (config, losses, wall time, greedy reference ids and first-step logits of
     PyTorch with the exported F16 weights) goes to models/<name>.json.
     tools/check_tiny_llamacpp.py cross-checks the export against llama.cpp.

Models (--model):
  ar   a Llama: RMSNorm, RoPE on adjacent pairs (x[2i], x[2i+1]), GQA, SwiGLU,
       tied output (no output.weight).  Written as GGUF arch "llama".
Later models trained on the same corpus and vocabulary (a draft model, masked
diffusion, block diffusion) add an entry to MODELS: a config, a loss function
and an export function; the tokenizer, data, optimiser loop and GGUF writing
are shared.
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


def export_llama(model, sp, path, name):
    c = model.c
    w = lwgguf.GGUFWriter()
    w.add("general.architecture", "llama")
    w.add("general.name", name)
    w.add("general.file_type", 1, lwgguf.UINT32)  # mostly F16
    for key, val in [("context_length", c["ctx"]), ("embedding_length", c["dim"]),
                     ("block_count", c["n_layer"]), ("feed_forward_length", c["ffn_dim"]),
                     ("attention.head_count", c["n_head"]), ("attention.head_count_kv", c["n_head_kv"]),
                     ("rope.dimension_count", c["dim"] // c["n_head"]), ("vocab_size", c["vocab_size"])]:
        w.add("llama." + key, val, lwgguf.UINT32)
    w.add("llama.rope.freq_base", float(c["rope_base"]), lwgguf.FLOAT32)
    w.add("llama.attention.layer_norm_rms_epsilon", float(c["norm_eps"]), lwgguf.FLOAT32)
    add_tokenizer_metadata(w, sp)

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


def train(model, loss_fn, train_ids, val_ids, t, log):
    gen = torch.Generator().manual_seed(SEED)
    opt = make_optimizer(model, t)
    t0 = time.time()
    for step in range(t["steps"]):
        lr = lr_at(step, t)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(train_ids, t["batch"], t["seq"], gen)
        loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        if step % t["log_every"] == 0 or step == t["steps"] - 1:
            el = time.time() - t0
            msg = "step %5d/%d  loss %.4f  lr %.2e  %.0fs (%.3fs/step)" % (
                step, t["steps"], loss.item(), lr, el, el / (step + 1))
            if t["eval_every"] and step and step % t["eval_every"] == 0:
                msg += "  val %.4f" % eval_loss(model, loss_fn, val_ids, t["seq"], max_windows=32)
            log(msg)
    return time.time() - t0


def ar_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))


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

MODELS = {
    "ar": dict(name="tiny-shakespeare", config=AR_CONFIG, train=AR_TRAIN,
               build=Llama, loss=ar_loss, export=export_llama),
    "draft": dict(name="tiny-shakespeare-draft", config=DRAFT_CONFIG, train=DRAFT_TRAIN,
                  build=Llama, loss=ar_loss, export=export_llama,
                  tokenizer_from="tiny-shakespeare.tokenizer.model"),
}

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
    model = spec["build"](cfg)
    log("model %s: %s, %d parameters" % (args.model, cfg, n_params(model)))
    log("train: %s" % tcfg)
    train_time = train(model, spec["loss"], train_ids, val_ids, tcfg, log)

    round_to_export(model)
    model.eval()
    loss_fn, seq = spec["loss"], tcfg["seq"]
    train_loss = eval_loss(model, loss_fn, train_ids, seq, max_windows=(len(val_ids) - 1) // seq)
    val_loss = eval_loss(model, loss_fn, val_ids, seq)
    log("final (F16-rounded weights): train loss %.4f  val loss %.4f nats/token" % (train_loss, val_loss))

    gguf_path = os.path.join(args.out_dir, name + ".gguf")
    spec["export"](model, sp, gguf_path, name)
    prompt_ids = [sp.bos_id()] + sp.encode(GREEDY_PROMPT)
    gen_ids, first_logits = greedy(model, prompt_ids, GREEDY_TOKENS)
    sample = sp.decode(gen_ids)
    log("greedy sample:\n%s%s" % (GREEDY_PROMPT, sample))
    if args.save_checkpoint:
        torch.save({"config": cfg, "model": model.state_dict()}, os.path.join(args.out_dir, name + ".pt"))

    record = {
        "name": name,
        "model": args.model,
        "architecture": "llama",
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
        "loss_note": "cross-entropy in nats per token, F16-rounded weights; train loss over "
                     "evenly spaced training windows as many as the validation set has",
        "steps": tcfg["steps"],
        "train_seconds": round(train_time, 1),
        "seconds_per_step": round(train_time / tcfg["steps"], 3),
        "wall_seconds": round(time.time() - wall0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "gguf": os.path.basename(gguf_path),
        "gguf_bytes": os.path.getsize(gguf_path),
        "greedy": {
            "prompt": GREEDY_PROMPT,
            "prompt_ids": prompt_ids,
            "ids": gen_ids,
            "text": sample,
            "note": "PyTorch float32 with the exported (F16) weights, argmax at each step",
            "first_logits": [round(float(v), 5) for v in first_logits],
        },
    }
    write_record(os.path.join(args.out_dir, name + ".json"), record)
    log("wrote %s (%d bytes) in %.0fs total" % (gguf_path, record["gguf_bytes"], record["wall_seconds"]))


if __name__ == "__main__":
    main()
