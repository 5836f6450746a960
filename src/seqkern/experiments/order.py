"""order (seed 1.3): bag-of-words cannot tell "dog bites man" from "man bites
dog"; n-grams are sparse; a small recurrent classifier separates them.

The task (who did what to whom): a sentence "the [adj] N1 [adv] V the [adj] N2"
and a query noun, one of its two participants; the answer is whether the query
is the one who acts (N1). Every test sentence comes with its swap ("the ... N2
... V the ... N1", same query), which has the opposite answer and the same bag
of words: any bag-of-words classifier answers both alike, so it gets exactly
one of each pair right. A GRU reading the words in order can get both.
"""

import os
import re
from collections import Counter

import numpy as np

from seqkern import nn, optim

from seqkern.experiments.common import Check, Verdict, new_figure

TITLE = "word order: bag-of-words and n-grams against a recurrent classifier"
CLAIM = ("bag-of-words cannot tell word order and n-grams are sparse, "
         "while a recurrent classifier separates swapped sentences")

SIZES = {
    "tiny": {"train": 256, "test_pairs": 64, "steps": 60, "batch": 32, "embed": 8, "hidden": 16},
    "quick": {"train": 4096, "test_pairs": 500, "steps": 400, "batch": 64, "embed": 16,
              "hidden": 32},
    "full": {"train": 16384, "test_pairs": 2000, "steps": 1500, "batch": 64, "embed": 16,
             "hidden": 48},
}

NOUNS = ["dog", "man", "cat", "girl", "boy", "horse", "bird", "fox"]
VERBS = ["bites", "sees", "chases", "helps", "pushes", "follows"]
ADJECTIVES = ["big", "small", "old", "young", "brown", "quick"]
ADVERBS = ["quickly", "slowly", "often", "never"]
PAD, QUERY = "<pad>", "?"
VOCAB = [PAD, "the", QUERY] + NOUNS + VERBS + ADJECTIVES + ADVERBS
INDEX = {w: i for i, w in enumerate(VOCAB)}
SEED_TEXT = os.path.join(os.path.dirname(__file__), "data", "seed-sequence-modeling.md")


def sentences(n, rng):
    """n random (agent, verb, patient) sentences as word lists (a query added by
    :func:`with_query`), and the swapped sentence of each."""
    out, swapped = [], []
    for _ in range(n):
        a, p = rng.choice(len(NOUNS), 2, replace=False)
        verb = VERBS[rng.integers(len(VERBS))]
        adj1 = [ADJECTIVES[rng.integers(len(ADJECTIVES))]] if rng.random() < 0.5 else []
        adj2 = [ADJECTIVES[rng.integers(len(ADJECTIVES))]] if rng.random() < 0.5 else []
        adv = [ADVERBS[rng.integers(len(ADVERBS))]] if rng.random() < 0.3 else []
        n1, n2 = NOUNS[a], NOUNS[p]
        out.append(["the"] + adj1 + [n1] + adv + [verb, "the"] + adj2 + [n2])
        swapped.append(["the"] + adj1 + [n2] + adv + [verb, "the"] + adj2 + [n1])
    return out, swapped


def agent(words):
    """The acting noun: the first noun of the sentence (active voice)."""
    return next(w for w in words if w in NOUNS)


def with_query(words, query):
    """(tokens "sentence ? query", label 1 if the query is the agent)."""
    return words + [QUERY, query], int(agent(words) == query)


def encode(token_lists):
    """(T, B) int64 word indices, padded at the front with <pad> (so that every
    sequence ends on its query at the last step), for the recurrent classifier."""
    T = max(len(t) for t in token_lists)
    ids = np.zeros((T, len(token_lists)), np.int64)
    for b, toks in enumerate(token_lists):
        ids[T - len(toks):, b] = [INDEX[w] for w in toks]
    return ids


def bag_of_words(token_lists):
    """(B, V) word counts of the sentence, then (B, V) one-hot of the query word."""
    V = len(VOCAB)
    X = np.zeros((len(token_lists), 2 * V))
    for b, toks in enumerate(token_lists):
        for w in toks[:-2]:
            X[b, INDEX[w]] += 1
        X[b, V + INDEX[toks[-1]]] = 1
    return X


def train_logistic(X, y, steps=300, lr=0.5):
    """Logistic regression by full-batch gradient descent: (w (F,), b)."""
    w, b = np.zeros(X.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(X @ w + b)))
        w -= lr * X.T @ (p - y) / len(y)
        b -= lr * float(np.mean(p - y))
    return w, b


def ngram_sparsity(text, n):
    """(distinct n-grams, fraction of them seen once, distinct / V^n) of ``text``'s words."""
    words = re.findall(r"[a-z']+", text.lower())
    grams = Counter(zip(*(words[i:] for i in range(n))))
    once = sum(1 for c in grams.values() if c == 1)
    vocab = len(set(words))
    return len(grams), once / max(len(grams), 1), len(grams) / float(vocab) ** n


def make_set(n, rng, paired):
    """(tokens, labels): n random questions, or n pairs (sentence, swap) with one
    query each, the swap right after its sentence."""
    sents, swaps = sentences(n, rng)
    toks, labels = [], []
    for s, w in zip(sents, swaps):
        q = s[[i for i, t in enumerate(s) if t in NOUNS][rng.integers(2)]]
        for words in ((s, w) if paired else (s if rng.random() < 0.5 else w,)):
            t, y = with_query(words, q)
            toks.append(t)
            labels.append(y)
    return toks, np.array(labels)


class GRUClassifier:
    """Embedding -> GRU -> Linear on the last hidden state -> 2 logits."""

    def __init__(self, embed, hidden, rng, dtype=np.float32):
        self.emb = nn.Embedding(len(VOCAB), embed, padding_idx=INDEX[PAD], dtype=dtype, rng=rng)
        self.gru = nn.GRU(embed, hidden, dtype=dtype, rng=rng)
        self.head = nn.Linear(hidden, 2, dtype=dtype, rng=rng)
        self.layers = [self.emb, self.gru, self.head]

    def forward(self, ids):
        e, ce = self.emb.forward(ids)
        _, h_n, cg = self.gru.forward(e)
        logits, ch = self.head.forward(h_n[-1])
        return logits, (ce, cg, ch)

    def backward(self, d_logits, caches):
        ce, cg, ch = caches
        d_h = self.head.backward(d_logits, ch)
        d_e, _ = self.gru.backward(None, d_h[None], cg)
        self.emb.backward(d_e, ce)


def train_gru(cfg, train, rng, ctx):
    """Train a GRUClassifier on (tokens, labels) with Adam; return it and its losses."""
    model = GRUClassifier(cfg["embed"], cfg["hidden"], rng)
    opt = optim.Adam([l.params for l in model.layers], [l.grads for l in model.layers], lr=1e-2)
    toks, labels = train
    losses = []
    bar = ctx.progress(cfg["steps"], "GRU classifier")
    for step in range(cfg["steps"]):
        idx = rng.integers(len(toks), size=cfg["batch"])
        ids = encode([toks[i] for i in idx])
        for layer in model.layers:
            layer.zero_grad()
        logits, caches = model.forward(ids)
        loss, d_logits = nn.cross_entropy(logits, labels[idx])
        model.backward(d_logits, caches)
        opt.step()
        losses.append(float(loss))
        bar.update()
    ctx.end_progress()
    return model, losses


def measure(cfg, ctx):
    rng = ctx.rng("order")
    with open(SEED_TEXT, encoding="utf-8") as f:
        text = f.read()
    ctx.say("n-gram sparsity of the seed text:")
    ctx.table("n", "distinct", "seen once", "of V^n")
    ngrams = {}
    for n in (1, 2, 3):
        distinct, once, coverage = ngram_sparsity(text, n)
        ngrams[str(n)] = {"distinct": distinct, "seen_once": once, "coverage": coverage}
        ctx.row(n, distinct, once, coverage)

    train = make_set(cfg["train"], rng, paired=False)
    test = make_set(cfg["test_pairs"], rng, paired=True)
    Xtr, Xte = bag_of_words(train[0]), bag_of_words(test[0])
    identical = float(np.mean(np.all(Xte[0::2] == Xte[1::2], axis=1)))
    w, b = train_logistic(Xtr, train[1])
    bow_train = float(np.mean(((Xtr @ w + b) > 0) == train[1]))
    bow_test = float(np.mean(((Xte @ w + b) > 0) == test[1]))

    model, losses = train_gru(cfg, train, rng, ctx)
    logits, _ = model.forward(encode(test[0]))
    pred = np.argmax(logits, axis=1)
    gru_test = float(np.mean(pred == test[1]))
    gru_pairs = float(np.mean((pred[0::2] == test[1][0::2]) & (pred[1::2] == test[1][1::2])))

    ctx.say("who did what to whom, on pairs of swapped sentences:")
    ctx.table("model", "train acc", "test acc", "pairs both")
    ctx.row("bag-of-words", bow_train, bow_test, 0.0 if identical == 1.0 else float("nan"))
    ctx.row("GRU", float("nan"), gru_test, gru_pairs)
    ctx.say(f"  bag-of-words vectors identical within a pair: {identical:.3f}; "
            f"example: {' '.join(test[0][0])} / {' '.join(test[0][1])}")
    return {"ngrams": ngrams, "bow_identical_fraction": identical, "bow_train_acc": bow_train,
            "bow_test_acc": bow_test, "gru_test_acc": gru_test, "gru_pairs_acc": gru_pairs,
            "gru_losses": losses, "example_pair": [test[0][0], test[0][1]]}


def verdict(numbers):
    ng = numbers["ngrams"]
    bi, tri = ng["2"]["seen_once"], ng["3"]["seen_once"]
    return Verdict(CLAIM, [
        Check("every swapped pair has the same bag-of-words vector",
              numbers["bow_identical_fraction"] == 1.0,
              f"{numbers['bow_identical_fraction']:.3f} of pairs"),
        Check("a bag-of-words classifier is at chance on swapped pairs (<= 0.55)",
              numbers["bow_test_acc"] <= 0.55, f"accuracy {numbers['bow_test_acc']:.3f}"),
        Check("most of the seed text's bigrams and trigrams are seen once (> 0.5)",
              bi > 0.5 and tri > 0.5, f"bigrams {bi:.2f}, trigrams {tri:.2f}"),
        Check("the GRU classifier separates swapped sentences (test accuracy >= 0.9)",
              numbers["gru_test_acc"] >= 0.9,
              f"accuracy {numbers['gru_test_acc']:.3f}, both of a pair {numbers['gru_pairs_acc']:.3f}"),
    ])


def figure(numbers):
    fig, axes = new_figure(2, 1, (10, 4))
    ax = axes[0, 0]
    names = ["bag-of-words", "GRU"]
    accs = [numbers["bow_test_acc"], numbers["gru_test_acc"]]
    ax.bar(names, accs, color=["tab:gray", "tab:blue"])
    ax.axhline(0.5, color="k", ls="--", lw=0.8, label="chance")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy on swapped pairs")
    ax.set_title("who did what to whom?")
    ax.legend()
    ax = axes[0, 1]
    ns = sorted(numbers["ngrams"], key=int)
    ax.bar([f"{n}-grams" for n in ns], [numbers["ngrams"][n]["seen_once"] for n in ns],
           color="tab:orange")
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of distinct n-grams seen once")
    ax.set_title("n-gram sparsity of the seed text")
    return fig
