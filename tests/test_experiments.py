"""python -m seqkern.experiments: each experiment end to end in its tiny size
(its JSON, its figure's data, its verdict line), each verdict on synthetic
numbers both ways, the tasks' and helpers' facts, and the hand-written model
backwards against central differences in float64."""

import io
import json
import math

import numpy as np
import pytest

from seqkern.experiments import NAMES, bottleneck, clipping, common, gradients, load, memory
from seqkern.experiments import order, parallel, training
from seqkern.experiments.__main__ import main

try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False


def run_tiny(name, out, seed=0, threads=1):
    stream = io.StringIO()
    result = common.run(load(name), "tiny", out_dir=str(out), seed=seed, threads=threads,
                        stream=stream)
    return result, stream.getvalue()


def figure_values(fig):
    """Every y value a figure draws: line data, bar heights, image pixels."""
    vals = []
    for ax in fig.axes:
        for line in ax.lines:
            vals.append(np.asarray(line.get_ydata(), float))
        for patch in ax.patches:
            vals.append(np.array([patch.get_height()]))
        for im in ax.images:
            vals.append(np.asarray(im.get_array(), float).ravel())
    return vals


def drawn(fig, series):
    """Whether ``series`` is drawn as one line (or image), or as bars in order."""
    series = np.asarray(series, float).ravel()
    vals = figure_values(fig)
    if any(v.shape == series.shape and np.allclose(v, series, equal_nan=True) for v in vals):
        return True
    bars = np.concatenate([v for v in vals if v.size == 1] or [np.zeros(0)])
    return any(np.allclose(bars[i:i + len(series)], series, equal_nan=True)
               for i in range(len(bars) - len(series) + 1))


def figure_series(name, n):
    """Series of the JSON numbers that experiment ``name``'s figure must draw."""
    if name == "order":
        return [[n["bow_test_acc"], n["gru_test_acc"]],
                [n["ngrams"][k]["seen_once"] for k in sorted(n["ngrams"], key=int)]]
    if name == "gradients":
        return [np.asarray(e[w]["norm_by_distance"]) / e[w]["norm_by_distance"][0]
                for e in n["models"].values() for w in ("init", "trained")]
    if name == "parallel":
        return [[r["tokens_per_s"] for r in n["by_length"] if r["kernel"] == k and r["batch"] == B]
                for k in parallel.KERNELS for B in parallel.BATCHES]
    if name == "clipping":
        return [r[key] for r in n["runs"].values() for key in ("losses", "grad_norms")]
    if name == "memory":
        return [[r["relative"] for r in n["runs"] if r["task"] == t and r["model"] == k]
                for t in ("adding", "copy") for k in memory.KINDS]
    if name == "bottleneck":
        return [[e["exact_match"][str(L)] for L in n["eval_lengths"]]
                for e in n["models"].values()] + [n["models"]["attention"]["example_weights"]]
    raise KeyError(name)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_run_writes_json_figure_and_verdict(name, tmp_path):
    result, text = run_tiny(name, tmp_path)
    with open(tmp_path / f"{name}.json") as f:
        saved = json.load(f)
    assert saved["numbers"] == json.loads(json.dumps(result["numbers"]))
    status = load(name).verdict(saved["numbers"]).status
    assert saved["verdict"]["status"] == status
    assert text.rstrip().splitlines()[-1].endswith(f"-> {status} by this run")
    if HAVE_MPL:
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        fig = load(name).figure(saved["numbers"])
        for series in figure_series(name, saved["numbers"]):
            assert drawn(fig, series), (name, series)
    else:
        assert not (tmp_path / f"{name}.png").exists()
        assert "matplotlib is not installed" in text


@pytest.mark.parametrize("name", [n for n in NAMES if n != "parallel"])
def test_tiny_run_reproducible(name, tmp_path):
    """The same numbers for the same seed, on 1 thread or 2 (the kernels' results do
    not depend on the thread count); other numbers for another seed."""
    a, _ = run_tiny(name, tmp_path / "a", seed=3)
    b, _ = run_tiny(name, tmp_path / "b", seed=3, threads=2)
    c, _ = run_tiny(name, tmp_path / "c", seed=4)
    assert json.dumps(a["numbers"]) == json.dumps(b["numbers"])
    assert json.dumps(a["numbers"]) != json.dumps(c["numbers"])


def test_without_matplotlib_a_note_and_no_png(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "have_matplotlib", lambda: False)
    _, text = run_tiny("order", tmp_path)
    assert "matplotlib is not installed" in text
    assert (tmp_path / "order.json").exists() and not (tmp_path / "order.png").exists()


def test_progress_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term, plain = Terminal(), io.StringIO()
    for stream in (term, plain):
        bar = common.Progress(4, "training", stream)
        bar.update(2)
        bar.close()
    assert "2/4 training" in term.getvalue() and "#" * 15 + "." * 15 in term.getvalue()
    assert term.getvalue().endswith("\r\033[K") and plain.getvalue() == ""


def test_cli(tmp_path, capsys):
    assert main(["clipping", "--size", "tiny", "--out", str(tmp_path), "--threads", "1",
                 "--seed", "2"]) == 0
    assert json.loads((tmp_path / "clipping.json").read_text())["seed"] == 2
    assert "clipping:" in capsys.readouterr().out
    import seqkern

    (tmp_path / "file").write_text("")
    out = ["--size", "tiny", "--out", str(tmp_path / "bad")]
    for bad in (["nope"], ["order", "--threads", "0"], ["order", "--seed", "x"],
                ["order", "--threads", str(seqkern.MAX_THREADS + 1)], ["order", "--seed", "-1"]):
        with pytest.raises(SystemExit) as e:      # a usage error, before any experiment runs
            main(bad + out)
        assert e.value.code == 2, bad
        assert not (tmp_path / "bad" / "order.json").exists()
    with pytest.raises(SystemExit) as e:
        main(["order", "--size", "tiny", "--out", str(tmp_path / "file" / "sub")])
    assert e.value.code == 2


# ---------------------------------------------------------------- verdicts


def test_verdict_status():
    V, C = common.Verdict, common.Check
    assert V("c", [C("a", True), C("b", True)]).status == common.SUPPORTED
    assert V("c", [C("a", True), C("b", False)]).status == common.NOT_SUPPORTED
    assert V("c", [C("a", None), C("b", False)]).status == common.NOT_SUPPORTED
    assert V("c", [C("a", True), C("b", None)]).status == common.UNDETERMINED
    assert V("c", []).status == common.UNDETERMINED


def order_numbers(identical=1.0, bow=0.5, bigrams=0.8, gru=0.97):
    return {"bow_identical_fraction": identical, "bow_test_acc": bow, "gru_test_acc": gru,
            "gru_pairs_acc": gru, "ngrams": {"2": {"seen_once": bigrams},
                                             "3": {"seen_once": 0.9}}}


def gradient_numbers(van=1e-9, exp_factor=1.05, gated=0.8):
    def e(factor, ratio):
        return {"init": {"factor": factor, "ratio_last": ratio},
                "trained": {"factor": factor, "ratio_last": ratio}}
    return {"T": 100, "models": {"rnn r=0.5": e(0.5, van), "rnn r=1.5": e(exp_factor, 10.0),
                                 "lstm": e(gated, 1e-3), "gru": e(gated, 1e-3)}}


def parallel_numbers(eff):
    rows = [{"kernel": k, "batch": B, "threads": 2, "efficiency": eff[(k, B)]}
            for k in parallel.KERNELS for B in parallel.BATCHES]
    return {"max_threads": 2, "by_threads": rows}


def clipping_numbers(free_final=math.nan, free_finite=30, clipped_final=0.15, free_norm=1e6,
                     clipped_max_loss=0.5):
    def run(clip, final, finite, norm, max_loss):
        losses = [0.3] + [0.2] * 39
        return {"clip": clip, "losses": losses, "final_mse": final, "finite_steps": finite,
                "max_norm": norm, "max_loss": max_loss}
    return {"chance_mse": 1 / 6, "max_norm": 1.0,
            "runs": {"no clipping": run(None, free_final, free_finite, free_norm, 1e30),
                     "clip 1": run(1.0, clipped_final, 40, 50.0, clipped_max_loss)}}


def memory_numbers(rel):
    return {"solved_below": memory.SOLVED,
            "runs": [{"task": "adding", "T": T, "model": k, "relative": v}
                     for k, by_T in rel.items() for T, v in by_T.items()]}


def bottleneck_numbers(plain, att, weights):
    return {"eval_lengths": [4, 16],
            "models": {"context vector": {"exact_match": {"4": plain[0], "16": plain[1]}},
                       "attention": {"exact_match": {"4": att[0], "16": att[1]},
                                     "example_weights": weights}}}


ANTI = np.eye(4)[::-1].tolist()
GOOD_MEM = {"rnn": {10: 0.01, 50: 0.9}, "lstm": {10: 0.01, 50: 0.05},
            "gru": {10: 0.01, 50: 0.05}, "attention": {10: 0.0, 50: 0.01}}
FLAT_MEM = {"rnn": {10: 0.01, 50: 0.05}, "lstm": {10: 0.01, 50: 0.05},
            "gru": {10: 0.01, 50: 0.05}, "attention": {10: 0.0, 50: 0.01}}
FAST = {(k, B): 0.9 for k in parallel.KERNELS for B in parallel.BATCHES}
SLOW_RNN = {**FAST, **{(k, 1): 0.5 for k in ("rnn", "lstm", "gru")}}


@pytest.mark.parametrize("module, numbers, status", [
    (order, order_numbers(), common.SUPPORTED),
    (order, order_numbers(gru=0.6), common.NOT_SUPPORTED),
    (order, order_numbers(identical=0.99), common.NOT_SUPPORTED),
    (order, order_numbers(bigrams=0.3), common.NOT_SUPPORTED),
    (gradients, gradient_numbers(), common.SUPPORTED),
    (gradients, gradient_numbers(van=0.1), common.NOT_SUPPORTED),
    (gradients, gradient_numbers(exp_factor=0.99), common.NOT_SUPPORTED),
    (gradients, gradient_numbers(gated=0.4), common.NOT_SUPPORTED),
    (parallel, parallel_numbers(SLOW_RNN), common.SUPPORTED),
    (parallel, parallel_numbers(FAST), common.NOT_SUPPORTED),
    (parallel, parallel_numbers({**SLOW_RNN, ("attention", 1): 0.5}),
     common.NOT_SUPPORTED),
    (parallel, parallel_numbers({**SLOW_RNN, ("gru", 32): 0.5}), common.NOT_SUPPORTED),
    (parallel, {"max_threads": 1, "by_threads": []}, common.UNDETERMINED),
    (clipping, clipping_numbers(), common.SUPPORTED),
    (clipping, clipping_numbers(free_final=0.1, free_finite=40), common.NOT_SUPPORTED),
    (clipping, clipping_numbers(free_norm=5.0), common.NOT_SUPPORTED),
    (clipping, clipping_numbers(clipped_max_loss=3.5), common.NOT_SUPPORTED),
    (memory, memory_numbers(GOOD_MEM), common.SUPPORTED),
    (memory, memory_numbers(FLAT_MEM), common.NOT_SUPPORTED),
    (memory, memory_numbers(dict(GOOD_MEM, attention={10: 0.0, 50: 0.5})),
     common.NOT_SUPPORTED),
    (memory, memory_numbers(dict(GOOD_MEM, lstm={10: 0.01, 50: 0.9})), common.NOT_SUPPORTED),
    (memory, memory_numbers(dict(GOOD_MEM, rnn={10: 0.9, 50: 0.9})), common.UNDETERMINED),
    (bottleneck, bottleneck_numbers((0.9, 0.1), (1.0, 0.95), ANTI), common.SUPPORTED),
    (bottleneck, bottleneck_numbers((0.9, 0.85), (1.0, 0.95), ANTI), common.NOT_SUPPORTED),
    (bottleneck, bottleneck_numbers((0.9, 0.1), (1.0, 0.2), ANTI), common.NOT_SUPPORTED),
    (bottleneck, bottleneck_numbers((0.9, 0.1), (1.0, 0.95), np.eye(6).tolist()),
     common.NOT_SUPPORTED),
])
def test_verdict_both_ways(module, numbers, status):
    assert module.verdict(numbers).status == status


# ---------------------------------------------------------------- tasks and helpers


def test_adding_batch(rng):
    x, y = training.adding_batch(20, 50, rng)
    marks = x[:, :, 1]
    assert np.all(marks.sum(axis=0) == 2)
    assert np.all(marks[:10].sum(axis=0) == 1)            # one mark in each half
    np.testing.assert_allclose(y, (x[:, :, 0] * marks).sum(axis=0), rtol=1e-6)
    assert abs(np.var(training.adding_batch(50, 20000, rng)[1]) - training.ADDING_CHANCE) < 0.01


def test_copy_batch(rng):
    T = 7
    x, t = training.copy_batch(T, 5, rng)
    ids = x.argmax(axis=2)
    assert x.shape == (T + 20, 5, 10) and np.all(x.sum(axis=2) == 1)
    assert np.all(ids[T + 9] == 9) and np.all(t[-10:] == ids[:10]) and np.all(t[:-10] == 0)
    assert np.all((ids[:10] >= 1) & (ids[:10] <= 8))
    # chance: blanks known, the 10 symbols guessed uniformly
    assert training.copy_chance(T) == pytest.approx(10 * math.log(8) / (T + 20))


def test_set_radius(rng):
    W = rng.standard_normal((12, 12)).astype(np.float32)
    training.set_radius(W, 1.5)
    assert np.max(np.abs(np.linalg.eigvals(W.astype(np.float64)))) == pytest.approx(1.5, 1e-5)


def test_fit_factor_and_distance():
    curve = 3.0 * 0.7 ** np.arange(30)
    assert gradients.fit_factor(curve) == pytest.approx(0.7)
    assert math.isnan(gradients.fit_factor([1.0, 0.0, np.nan]))
    np.testing.assert_array_equal(gradients.by_distance([1, 2, 3]), [3, 2, 1])


def test_grad_norms_are_the_input_gradient(rng):
    """||dL/dx_t|| for L = <u, h_T>, against central differences through the layer."""
    from seqkern import nn

    rec = nn.GRU(3, 5, dtype=np.float64, rng=1)
    x = rng.standard_normal((6, 2, 3))
    u = rng.standard_normal((2, 5))
    got = gradients.grad_norms(rec, x, u)

    def loss(xx):
        return float(np.sum(u * rec.forward(xx)[1][0]))

    dx = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[i] = 1e-6
        dx[i] = (loss(x + e) - loss(x - e)) / 2e-6
    np.testing.assert_allclose(got, np.linalg.norm(dx, axis=2).mean(axis=1), rtol=1e-6)


def test_ngram_sparsity_and_bag_of_words():
    distinct, once, coverage = order.ngram_sparsity("a b a b c", 2)
    assert (distinct, once) == (3, 2 / 3) and coverage == pytest.approx(3 / 9)
    s, w = order.with_query(["the", "dog", "bites", "the", "man"], "dog"), \
        order.with_query(["the", "man", "bites", "the", "dog"], "dog")
    assert s[1] == 1 and w[1] == 0
    X = order.bag_of_words([s[0], w[0]])
    assert np.array_equal(X[0], X[1])
    ids = order.encode([s[0], ["the", "dog", "?", "dog"]])
    assert ids.shape == (7, 2) and np.all(ids[:3, 1] == order.INDEX[order.PAD])


def test_reach_and_alignment():
    n = memory_numbers({"rnn": {10: 0.1, 50: 0.5, 100: 0.1}})
    assert memory.reach(n, "adding", "rnn") == 10      # solved again at 100 does not count
    n = memory_numbers({"rnn": {10: math.nan}})
    assert memory.reach(n, "adding", "rnn") == 0
    assert bottleneck.alignment(ANTI) == 1.0
    assert bottleneck.alignment(np.eye(6)) == pytest.approx(2 / 6)   # only j = 2, 3 pass
    shifted = np.eye(6)[[5, 5, 4, 3, 2, 1]]          # output j looks at source L - j (or L - 1)
    assert bottleneck.alignment(shifted) == 1.0
    assert bottleneck.alignment(np.eye(6)[[3, 2, 1, 0, 5, 4]]) == 0.0   # not a diagonal
    lag2 = np.eye(6)[[5, 5, 5, 4, 3, 2]]             # the state two steps after the digit
    assert bottleneck.alignment(lag2) == 1.0
    assert bottleneck.alignment(np.eye(6)[[0, 5, 1, 4, 2, 3]]) < 0.8


# ---------------------------------------------------------------- model backwards


def check_model_grads(model, loss_of, rng, n_checks=6):
    """Each layer's parameter gradients from ``model.backward`` against central
    differences of ``loss_of()`` (float64), at a few random entries."""
    for layer in model.layers:
        layer.zero_grad()
    loss, backward = loss_of()
    backward()
    for layer in model.layers:
        for key, p in layer.params.items():
            for _ in range(n_checks):
                i = tuple(rng.integers(s) for s in p.shape)
                if getattr(layer, "padding_idx", None) == i[0]:
                    continue                      # the padding row gets no gradient, by design
                old = p[i]
                p[i] = old + 1e-6
                up = loss_of()[0]
                p[i] = old - 1e-6
                down = loss_of()[0]
                p[i] = old
                num = (up - down) / 2e-6
                assert layer.grads[key][i] == pytest.approx(num, rel=1e-5, abs=1e-8), \
                    (type(layer).__name__, key, i)


@pytest.mark.parametrize("task_name, kind", [("adding", "lstm"), ("adding", "attention"),
                                             ("copy", "attention"), ("copy", "gru")])
def test_training_model_gradients(task_name, kind, rng):
    task = training.Task(task_name, 4)
    model = training.make_model(kind, task, 6, np.random.default_rng(0), dtype=np.float64)
    x, t = task.batch(3, rng)
    x = x.astype(np.float64)

    def loss_of():
        y, cache = model.forward(x)
        loss, dy = task.loss(y, t)
        return loss, lambda: model.backward(dy, cache)

    check_model_grads(model, loss_of, rng)


@pytest.mark.parametrize("attention", [False, True])
def test_seq2seq_gradients(attention, rng):
    from seqkern import nn

    model = bottleneck.Seq2Seq(4, 5, attention, np.random.default_rng(0), dtype=np.float64)
    src, tgt = bottleneck.reversal_batch(4, 3, rng)
    dec_in = np.concatenate([np.full((1, 3), bottleneck.BOS), tgt[:-1]])

    def loss_of():
        logits, cache = model.forward(src, dec_in)
        loss, d = nn.cross_entropy(logits.reshape(-1, bottleneck.VOCAB), tgt.reshape(-1))
        return float(loss), lambda: model.backward(d.reshape(logits.shape), cache)

    check_model_grads(model, loss_of, rng)


def test_greedy_decoding_matches_teacher_forcing_on_its_own_output(rng):
    """Greedy decoding step by step equals one teacher-forced pass fed its outputs."""
    model = bottleneck.Seq2Seq(4, 8, True, np.random.default_rng(0), dtype=np.float64)
    src, _ = bottleneck.reversal_batch(5, 3, rng)
    pred, weights = model.greedy(src)
    dec_in = np.concatenate([np.full((1, 3), bottleneck.BOS), pred[:-1]])
    logits, _ = model.forward(src, dec_in)
    np.testing.assert_array_equal(np.argmax(logits, axis=2), pred)
    np.testing.assert_allclose(weights.sum(axis=2), 1.0)


def test_gru_classifier_gradients(rng):
    from seqkern import nn

    model = order.GRUClassifier(4, 5, np.random.default_rng(0), dtype=np.float64)
    toks, labels = order.make_set(3, rng, paired=True)
    ids = order.encode(toks)

    def loss_of():
        logits, caches = model.forward(ids)
        loss, d = nn.cross_entropy(logits, labels)
        return float(loss), lambda: model.backward(d, caches)

    check_model_grads(model, loss_of, rng)
