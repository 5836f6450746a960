"""bottleneck (seed 5.1-5.3, 7.2): an encoder-decoder that passes the source
through one fixed-size context vector loses long sources; the same model with
attention over the encoder states looks back at every source position.

Task: reverse a string of digits (generated on the fly; a batch has one
length, drawn from the training lengths). Both models: an embedding and a GRU
encoder; a GRU decoder started from the encoder's last state, fed the previous
target digit (teacher forcing in training, its own greedy output in
evaluation). Without attention the decoder's state goes to a linear read-out;
with attention (Luong's "general" score s W_a h, scaled, through
``attention_forward``) the state queries the encoder states, and tanh(W [state; context]) goes to the
read-out. Same sizes, same batches, same number of Adam steps. Measured:
exact-match accuracy (every digit right) against the source length, and the
attention weights of one example (computed in NumPy from the same states:
the flash kernel never forms them), whose argmax should follow the reversal
(output j looks at source position L - 1 - j).
"""

import numpy as np

import seqkern
from seqkern import nn, optim

from seqkern.experiments.common import Check, Verdict, new_figure

TITLE = "the context-vector bottleneck: encoder-decoder GRU with and without attention"
CLAIM = ("one fixed context vector loses long sources "
         "while attention over the encoder states does not")
DIGITS, BOS = 10, 10           # tokens 0..9 are digits, 10 starts the decoder
VOCAB = DIGITS + 1
MODELS = ("context vector", "attention")

SIZES = {
    "tiny": {"embed": 8, "hidden": 16, "train_lengths": [2, 4], "eval_lengths": [2, 4],
             "steps": 10, "batch": 8, "lr": 1e-2, "eval": 16},
    "quick": {"embed": 32, "hidden": 64, "train_lengths": [2, 16],
              "eval_lengths": [4, 8, 12, 16], "steps": 2000, "batch": 64, "lr": 5e-3,
              "eval": 256},
    "full": {"embed": 32, "hidden": 96, "train_lengths": [2, 24],
             "eval_lengths": [4, 8, 12, 16, 20, 24], "steps": 3000, "batch": 64, "lr": 3e-3,
             "eval": 512},
}


def reversal_batch(L, B, rng):
    """src (L, B) digits; tgt (L, B) the same reversed."""
    src = rng.integers(0, DIGITS, (L, B))
    return src, src[::-1].copy()


class Seq2Seq:
    """GRU encoder-decoder, with or without dot-product attention (shapes time-major)."""

    def __init__(self, embed, hidden, attention, rng, dtype=np.float32):
        self.attention = attention
        self.enc_emb = nn.Embedding(VOCAB, embed, dtype=dtype, rng=rng)
        self.enc = nn.GRU(embed, hidden, dtype=dtype, rng=rng)
        self.dec_emb = nn.Embedding(VOCAB, embed, dtype=dtype, rng=rng)
        self.dec = nn.GRU(embed, hidden, dtype=dtype, rng=rng)
        self.out = nn.Linear(hidden, VOCAB, dtype=dtype, rng=rng)
        self.layers = [self.enc_emb, self.enc, self.dec_emb, self.dec, self.out]
        if attention:
            self.query = nn.Linear(hidden, hidden, bias=False, dtype=dtype, rng=rng)
            self.comb = nn.Linear(2 * hidden, hidden, dtype=dtype, rng=rng)
            self.layers += [self.query, self.comb]

    def encode(self, src):
        e, c_emb = self.enc_emb.forward(src)
        enc_out, h_n, c_enc = self.enc.forward(e)
        return enc_out, h_n, (c_emb, c_enc)

    def decode(self, dec_in, h0, enc_out):
        """dec_in (L', B) tokens, h0 (1, B, H) -> (logits (L', B, V), h_n, cache)."""
        e, c_emb = self.dec_emb.forward(dec_in)
        s, h_n, c_dec = self.dec.forward(e, h0)                   # (L', B, H)
        if not self.attention:
            logits, c_out = self.out.forward(s)
            return logits, h_n, (c_emb, c_dec, c_out)
        sq, c_q = self.query.forward(s)                           # Luong's "general": s W_a
        q = sq.transpose(1, 0, 2)[:, None]                        # (B, 1, L', H)
        kv = enc_out.transpose(1, 0, 2)[:, None]                  # (B, 1, L, H)
        ctx, c_att = seqkern.attention_forward(q, kv, kv)
        ctx = ctx[:, 0].transpose(1, 0, 2)                        # (L', B, H)
        a, c_comb = self.comb.forward(np.concatenate([s, ctx], axis=2))
        t = np.tanh(a)
        logits, c_out = self.out.forward(t)
        return logits, h_n, (c_emb, c_dec, c_out, c_att, c_comb, t, c_q, sq)

    def forward(self, src, dec_in):
        enc_out, h_n, c_enc = self.encode(src)
        logits, _, c_dec = self.decode(dec_in, h_n, enc_out)
        return logits, (c_enc, c_dec)

    def backward(self, d_logits, cache):
        (c_eemb, c_enc), c_dec = cache
        d_enc_out = None
        if not self.attention:
            c_emb, c_d, c_out = c_dec
            d_s = self.out.backward(d_logits, c_out)
        else:
            c_emb, c_d, c_out, c_att, c_comb, t, c_q, _ = c_dec
            d_t = self.out.backward(d_logits, c_out)
            d_cat = self.comb.backward(d_t * (1 - t * t), c_comb)   # through tanh
            H = d_cat.shape[2] // 2
            d_s = d_cat[:, :, :H]
            d_ctx = np.ascontiguousarray(d_cat[:, :, H:].transpose(1, 0, 2)[:, None])
            dq, dk, dv = seqkern.attention_backward(d_ctx, c_att)
            d_s = d_s + self.query.backward(dq[:, 0].transpose(1, 0, 2), c_q)
            d_enc_out = (dk + dv)[:, 0].transpose(1, 0, 2)
        d_e, d_h0 = self.dec.backward(d_s, None, c_d)
        self.dec_emb.backward(d_e, c_emb)
        d_x, _ = self.enc.backward(d_enc_out, d_h0, c_enc)
        self.enc_emb.backward(d_x, c_eemb)

    def greedy(self, src):
        """(predictions (L, B), attention weights (B, L, L) or None): decoding
        one step at a time from BOS, each step fed the previous prediction."""
        L, B = src.shape
        enc_out, h, _ = self.encode(src)
        tok = np.full((1, B), BOS)
        preds, queries = [], []
        for _ in range(L):
            logits, h, c = self.decode(tok, h, enc_out)
            tok = np.argmax(logits, axis=2)                     # (1, B)
            preds.append(tok[0])
            if self.attention:
                queries.append(c[-1][0])                        # (B, H) this step's s W_a
        weights = None
        if self.attention:
            s = np.stack(queries, axis=1)                       # (B, L', H)
            scores = s @ enc_out.transpose(1, 2, 0) / np.sqrt(s.shape[2])   # (B, L', L)
            scores -= scores.max(axis=2, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=2, keepdims=True)
        return np.stack(preds), weights


def train(model, cfg, rng, bar):
    opt = optim.Adam([l.params for l in model.layers], [l.grads for l in model.layers],
                     lr=cfg["lr"])
    lo, hi = cfg["train_lengths"]
    losses = []
    for _ in range(cfg["steps"]):
        L = int(rng.integers(lo, hi + 1))
        src, tgt = reversal_batch(L, cfg["batch"], rng)
        dec_in = np.concatenate([np.full((1, cfg["batch"]), BOS), tgt[:-1]])
        opt.zero_grad()
        logits, cache = model.forward(src, dec_in)
        loss, d = nn.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1))
        model.backward(d.reshape(logits.shape), cache)
        nn.clip_grad_norm_([l.grads for l in model.layers], 5.0)
        opt.step()
        losses.append(float(loss))
        bar.update()
    return losses


def measure(cfg, ctx):
    ctx.say(f"reversing digit strings; GRU width {cfg['hidden']}, trained on lengths "
            f"{cfg['train_lengths'][0]}..{cfg['train_lengths'][1]}, {cfg['steps']} Adam steps "
            f"of batch {cfg['batch']}; exact match on {cfg['eval']} fresh strings per length")
    ctx.table("model", "length", "exact match", "digit acc")
    bar = ctx.progress(len(MODELS) * cfg["steps"], "training")
    results = {}
    for name in MODELS:
        model = Seq2Seq(cfg["embed"], cfg["hidden"], name == "attention", ctx.rng("model"))
        losses = train(model, cfg, ctx.rng("data"), bar)
        acc, digit = {}, {}
        for L in cfg["eval_lengths"]:
            src, tgt = reversal_batch(L, cfg["eval"], ctx.rng("eval", L))
            pred, weights = model.greedy(src)
            acc[L] = float(np.mean(np.all(pred == tgt, axis=0)))
            digit[L] = float(np.mean(pred == tgt))
            ctx.row(name, L, acc[L], digit[L])
        entry = {"losses": losses, "exact_match": acc, "digit_accuracy": digit}
        if weights is not None:                   # the last (longest) length's first example
            entry["example_source"] = src[:, 0]
            entry["example_weights"] = weights[0]
        results[name] = entry
    ctx.end_progress()
    return {"eval_lengths": cfg["eval_lengths"], "models": results}


def alignment(weights):
    """Fraction of output steps j whose largest weight is within one position of
    the reversal diagonal, source position L - 1 - j (the digit step j writes),
    shifted by the encoder's lag d (0, 1 or 2, whichever fits best, clipped at
    L - 1): a GRU encoder's state at t holds digit t and keeps the digits just
    before it for a few steps, so the states after digit L - 1 - j serve as well."""
    w = np.asarray(weights)
    L = w.shape[1]
    picked = np.argmax(w, axis=1)
    want = np.arange(L)[::-1]
    return max(float(np.mean(np.abs(picked - np.minimum(want + d, L - 1)) <= 1))
               for d in (0, 1, 2))


def verdict(numbers):
    first, last = (str(L) for L in (numbers["eval_lengths"][0], numbers["eval_lengths"][-1]))
    plain = numbers["models"]["context vector"]["exact_match"]
    att = numbers["models"]["attention"]["exact_match"]
    align = alignment(numbers["models"]["attention"]["example_weights"])
    return Verdict(CLAIM, [
        Check(f"without attention, exact match falls by >= 0.2 from length {first} to {last}",
              plain[first] - plain[last] >= 0.2, f"{plain[first]:.3f} -> {plain[last]:.3f}"),
        Check(f"with attention, exact match at length {last} is >= 0.2 higher",
              att[last] - plain[last] >= 0.2, f"{att[last]:.3f} against {plain[last]:.3f}"),
        Check("the attention weights follow the reversal (argmax within one position of "
              "source L-1-j, or of the encoder state up to 2 steps after it, for >= 80% of "
              "output steps j)", align >= 0.8,
              f"{align:.2f} of steps"),
    ])


def figure(numbers):
    fig, axes = new_figure(2, 1, (11, 4.5))
    ax = axes[0, 0]
    for name, entry in numbers["models"].items():
        Ls = sorted(entry["exact_match"], key=int)
        ax.plot([int(L) for L in Ls], [entry["exact_match"][L] for L in Ls], marker="o",
                label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("source length")
    ax.set_ylabel("exact match (greedy decoding)")
    ax.set_title("reversing digit strings")
    ax.legend()
    ax = axes[0, 1]
    att = numbers["models"]["attention"]
    w = np.asarray(att["example_weights"])
    im = ax.imshow(w, cmap="viridis", vmin=0, vmax=1)
    src = att["example_source"]
    ax.set_xticks(range(len(src)))
    ax.set_xticklabels([str(d) for d in src], fontsize=7)
    ax.set_yticks(range(len(src)))
    ax.set_yticklabels([str(d) for d in src[::-1]], fontsize=7)
    ax.set_xlabel("source digit")
    ax.set_ylabel("output step (target digit)")
    ax.set_title("attention weights of one example")
    fig.colorbar(im, ax=ax)
    return fig
