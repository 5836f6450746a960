"""The benchmark command: its grid, JSON, comparison and arguments."""

import json
import os
import subprocess

import numpy as np
import pytest

from seqkern.bench import __main__ as cli
from seqkern.bench import cases, runner
from seqkern.bench.cases import (ATTENTION_STEP_SHAPES, STEP_SHAPES, Case, grid, make_runner,
                                 steps, torch_available)


def test_flop_counts():
    # RNN forward: two GEMMs per step, 2*B*H*(I+H) flops per step.
    c = Case("rnn", (2, 3, 5, 7), "fwd")
    assert c.flops() == 2 * 2 * 3 * 7 * (5 + 7)
    assert Case("rnn", (2, 3, 5, 7), "fwd+bwd").flops() == 3 * c.flops()
    assert Case("lstm", (2, 3, 5, 7), "fwd").flops() == 4 * c.flops()
    assert Case("gru", (2, 3, 5, 7), "fwd").flops() == 3 * c.flops()
    a = Case("attention", (2, 4, 16, 8), "fwd")
    assert a.flops() == 4 * 2 * 4 * 16 * 16 * 8
    assert Case("attention", (2, 4, 16, 8), "fwd", causal=True).flops() == 4 * 2 * 4 * (16 * 17 / 2) * 8
    assert c.tokens() == 6 and a.tokens() == 32


def test_runner_results_are_real_calls():
    case = Case("rnn", (2, 5, 3, 4), "fwd+bwd")
    grads = make_runner(case, "seqkern")()
    ref = make_runner(case, "reference")()
    for g, r in zip(grads, ref):
        assert g.shape == r.shape
        assert abs(g - r).max() < 1e-3


@pytest.mark.parametrize("suite", ["grid", "step"])
def test_runners_agree(suite):
    """seqkern's runner returns what the reference's does (the outputs, or the
    gradients) and PyTorch's (where installed) the same output and dx: one step
    (suite "step": RNNCell, LSTMCell, GRUCell) or a sequence."""
    T = 1 if suite == "step" else 4
    for kernel in ("rnn", "lstm", "gru"):
        for direction in ("fwd", "fwd+bwd"):
            case = Case(kernel, (3, T, 5, 4), direction, "float64", suite=suite)
            got = make_runner(case, "seqkern")()
            want = make_runner(case, "reference")()
            n = len(got) - 1 if direction == "fwd" else len(got)   # (the forward's cache last)
            for g, w in zip(got[:n], want[:n]):
                assert (g is None) == (w is None)
                if g is not None:
                    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
            if torch_available():
                t = make_runner(case, "torch")()
                if direction == "fwd":
                    # (out, state) over a sequence; (h, c) from LSTMCell; h from the others
                    t = t if suite == "step" and kernel != "lstm" else t[0]
                    np.testing.assert_allclose(t.numpy(), got[0], rtol=1e-10, atol=1e-12)
                else:
                    np.testing.assert_allclose(t.numpy(), got.dx, rtol=1e-10, atol=1e-12)


def test_step_cases():
    cases = steps(dtypes=("float32", "float64"))
    rec = [c for c in cases if c.kernel != "attention"]
    att = [c for c in cases if c.kernel == "attention"]
    assert len(rec) == 3 * len(STEP_SHAPES) * 2 * 2
    assert len(att) == len(ATTENTION_STEP_SHAPES) * 2
    assert all(c.suite == "step" and " step " in c.name for c in cases)
    assert all(c.shape[1] == 1 for c in rec)
    assert {c.direction for c in rec} == {"fwd", "fwd+bwd"}
    assert {c.direction for c in att} == {"fwd"}
    assert steps(kernels=["attention"]) == [c for c in att if c.dtype == "float32"]
    B, H, T, D = ATTENTION_STEP_SHAPES[0]
    case = Case("attention", (B, H, T, D), "fwd", suite="step")
    assert case.tokens() == B and case.flops() == 4.0 * B * H * T * D


def test_attention_step_runners_agree():
    """A decoding step: one query against the cache; seqkern's output is the
    reference's, and PyTorch's (where installed)."""
    case = Case("attention", (2, 3, 37, 8), "fwd", "float64", suite="step")
    got, _ = make_runner(case, "seqkern")()
    want, _ = make_runner(case, "reference")()
    assert got.shape == (2, 3, 1, 8)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if torch_available():
        np.testing.assert_allclose(make_runner(case, "torch")().numpy(), got,
                                   rtol=1e-10, atol=1e-12)


def test_quick_cli_json_has_every_case(tmp_path, capsys):
    path = tmp_path / "run.json"
    rc = cli.main(["--quick", "--kernels", "rnn", "--threads", "1", "--budget", "0",
                   "--impls", "seqkern,reference", "--json", str(path)])
    assert rc == 0
    doc = json.loads(path.read_text())
    expected = {c.name for c in grid(quick=True, kernels=["rnn"])}
    got = {r["case"] for r in doc["results"]}
    assert got == expected
    for r in doc["results"]:
        assert r["median_s"] > 0 and r["gflops"] > 0 and r["threads"] == 1
        assert r["speedup_vs_reference"] > 0
    assert doc["machine"]["cores"] >= 1 and "compiler_flags" in doc["machine"]
    printed = capsys.readouterr().out
    assert "GFLOP/s" in printed and "rnn 1x100x128x128 fwd float32" in printed
    from seqkern._openmp_helpers import openmp_enabled
    h = doc["handoff_ns_before_after"]
    if openmp_enabled():
        assert len(h) == 2 and all(ns > 1 for ns in h)
        assert "between two threads and back" in printed
    else:
        assert h == [None, None]

    # --steps --no-grid: the step cases only
    path2 = tmp_path / "steps.json"
    rc = cli.main(["--steps", "--no-grid", "--kernels", "gru", "--threads", "1", "--budget", "0",
                   "--impls", "seqkern,reference", "--json", str(path2)])
    assert rc == 0
    got = {r["case"] for r in json.loads(path2.read_text())["results"]}
    assert got == {c.name for c in steps(kernels=["gru"])}

    # --compare against itself: every case in common, ratios are old/new medians.
    rows = runner.compare(str(path), doc["results"])
    assert len(rows) == len(doc["results"])
    assert all(abs(ratio - 1) < 1e-12 for _, ratio in rows)


def test_cli_per_isa_and_busy(tmp_path, capsys):
    """--isa runs the benchmark once per level, each in its own process and JSON
    file, recording the level; --busy records the busy processes beside the run."""
    from seqkern import _dispatch

    path = tmp_path / "run.json"
    rc = cli.main(["--steps", "--no-grid", "--kernels", "rnn", "--threads", "1", "--budget", "0",
                   "--impls", "seqkern", "--isa", _dispatch.COMPILED[0], "--busy", "1",
                   "--json", str(path)])
    assert rc == 0
    doc = json.loads((tmp_path / f"run.{_dispatch.COMPILED[0]}.json").read_text())
    assert {r["isa_level"] for r in doc["results"]} == {_dispatch.COMPILED[0]}
    assert {r["busy_processes"] for r in doc["results"]} == {1}
    assert doc["machine"]["isa_level"] == _dispatch.COMPILED[0]
    assert doc["aten_cpu_capability"] == cli.ATEN_CAPABILITY.get(
        _dispatch.COMPILED[0], os.environ.get("ATEN_CPU_CAPABILITY"))
    # which BLAS libraries were loaded is recorded (at least seqkern's own, SciPy's),
    # with OpenBLAS's kernel set where it is OpenBLAS
    assert doc["blas"] and all(b["internal_api"] for b in doc["blas"])
    assert all(b["architecture"] for b in doc["blas"] if b["internal_api"] == "openblas")
    assert not path.exists()

    # as a user types it (python -m, argv from the command line)
    import sys
    r = subprocess.run([sys.executable, "-m", "seqkern.bench", "--steps", "--no-grid",
                        "--kernels", "rnn", "--threads", "1", "--budget", "0", "--impls", "seqkern",
                        "--isa", "all", f"--json={tmp_path / 'm.json'}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("=== level ") >= 1
    assert (tmp_path / f"m.{_dispatch.COMPILED[0]}.json").exists()


def test_per_isa_runs_pytorch_at_the_same_level(monkeypatch, tmp_path):
    """--isa starts one process per level with SEQKERN_MAX_ISA, PyTorch's
    ATEN_CPU_CAPABILITY of that level (sse2: PyTorch's "default") and its GEMMs'
    caps, and below the CPU's level OpenBLAS's kernels of that level, whatever the
    caller's environment says."""
    from seqkern import _cpu, _dispatch

    monkeypatch.setattr(_dispatch, "COMPILED", ["sse2", "avx2", "avx512"])
    monkeypatch.setattr(_cpu, "x86_level", lambda: 4)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    started = []

    def run(cmd, env):
        started.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(cli.subprocess, "run", run)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX512")
    assert cli.main(["--quick", "--isa", "all", "--json", str(tmp_path / "r.json")]) == 0
    assert [(env["SEQKERN_MAX_ISA"], env["ATEN_CPU_CAPABILITY"]) for _, env in started] == \
        [("sse2", "default"), ("avx2", "avx2"), ("avx512", "avx512")]
    # PyTorch's GEMMs and OpenBLAS capped alike; at the CPU's own level OpenBLAS's
    # choice is left as the caller's environment has it
    assert [(env["MKL_ENABLE_INSTRUCTIONS"], env["ONEDNN_MAX_CPU_ISA"], env["OPENBLAS_CORETYPE"])
            for _, env in started] == [("SSE4_2", "SSE41", "Prescott"), ("AVX2", "AVX2", "Haswell"),
                                       ("AVX512", "AVX512_CORE", "Zen")]
    assert [cmd[cmd.index("--json") + 1] for cmd, _ in started] == \
        [str(tmp_path / f"r.{lv}.json") for lv in ("sse2", "avx2", "avx512")]
    assert all("--isa" not in cmd and "--quick" in cmd for cmd, _ in started)


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--threads", "a"], ["--kernels", "cnn"],
                                  ["--dtypes", "float16"], ["--impls", "jax"], ["--busy", "-1"],
                                  ["--isa", "avx9000"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2


def _bad_runs(tmp_path):
    """(argv, what the message must say) of commands refused before anything is timed."""
    import seqkern

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"results": [1, 2]}')
    quick = ["--steps", "--no-grid", "--kernels", "rnn", "--budget", "0"]
    return [
        (["--threads", f"1,{seqkern.MAX_THREADS + 1}"], "MAX_THREADS"),
        (quick + ["--json", str(tmp_path / "no" / "such" / "run.json")], "error: --json"),
        (quick + ["--json", str(tmp_path)], "error: --json"),
        (quick + ["--compare", str(tmp_path / "missing.json")], "error: --compare"),
        (quick + ["--compare", str(bad_json)], "not the JSON of a python -m seqkern.bench"),
        (["--impls", "seqkern-loop", "--quick"], "needs --layers"),
        (["--no-grid"], "--no-grid leaves nothing to run"),
        (["--layers", "--no-grid", "--kernels", "rnn"], "not for rnn"),
    ]


def test_refused_before_any_timing(tmp_path, capsys, monkeypatch):
    """Thread counts past seqkern.MAX_THREADS, a --json that cannot be written, a
    --compare that is not a run's JSON, options that select nothing: a usage error
    naming the option before the first case runs (it used to come after the whole
    run, as a traceback, losing every measurement)."""
    def no_timing(*a, **k):
        raise AssertionError("timed before checking the arguments")

    monkeypatch.setattr(runner, "run", no_timing)
    for argv, said in _bad_runs(tmp_path):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv
        assert said in capsys.readouterr().err, argv


def test_compare_reads_the_old_run_before_json_writes(tmp_path, monkeypatch, capsys):
    """--json and --compare naming one file: the comparison is with the file as it
    was, not with the run just written over it."""
    path = tmp_path / "run.json"
    row = {"case": "rnn 1x2x3x4 fwd float32", "impl": "seqkern", "threads": 1}
    path.write_text(json.dumps({"results": [dict(row, median_s=2.0)]}))
    monkeypatch.setattr(runner, "run", lambda *a, **k: ([dict(row, median_s=1.0)], {}))
    cli.main(["--steps", "--no-grid", "--kernels", "rnn", "--threads", "1", "--budget", "0",
              "--json", str(path), "--compare", str(path)])
    assert "2.00x" in capsys.readouterr().out


def test_thread_counts_once_each(tmp_path, monkeypatch):
    seen = []

    def run(cases, threads, **kw):
        seen.append(threads)
        return [], {}
    monkeypatch.setattr(runner, "run", run)
    cli.main(["--steps", "--no-grid", "--kernels", "rnn", "--threads", "1,2,1", "--budget", "0"])
    assert seen == [[1, 2]]


def test_per_isa_plots_in_a_folder_per_level(monkeypatch, tmp_path):
    from seqkern import _cpu, _dispatch

    monkeypatch.setattr(_dispatch, "COMPILED", ["sse2", "avx2"])
    monkeypatch.setattr(_cpu, "x86_level", lambda: 3)
    started = []
    monkeypatch.setattr(cli.subprocess, "run",
                        lambda cmd, env: started.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert cli.main(["--quick", "--isa", "all", "--plot", str(tmp_path)]) == 0
    assert [cmd[cmd.index("--plot") + 1] for cmd in started] == \
        [str(tmp_path / lv) for lv in ("sse2", "avx2")]


def test_time_interleaved_alternates(monkeypatch):
    import time

    monkeypatch.setattr(runner, "SAMPLE_S", 0.0)      # one call per sample
    monkeypatch.setattr(runner, "PAUSE_S", 0.0)
    order = []
    times = runner.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                    budget_s=0, min_repeats=3)
    assert order == ["a", "b"] * 4          # one warm-up each, then 3 rounds in turn
    assert len(times["a"]) == len(times["b"]) == 3
    # A sample of several calls reports the time per call.
    monkeypatch.setattr(runner, "SAMPLE_S", 0.01)
    t = runner.time_interleaved({"sleep": lambda: time.sleep(0.002)}, budget_s=0, min_repeats=2)
    assert all(0.0015 < x < 0.01 for x in t["sleep"])


def test_time_interleaved_runs_each_sample_in_its_context(monkeypatch):
    """contexts: every warm-up call and sample of a name runs inside its own context
    manager, and the names still take turns."""
    from contextlib import contextmanager

    monkeypatch.setattr(runner, "SAMPLE_S", 0.0)
    monkeypatch.setattr(runner, "PAUSE_S", 0.0)
    inside, seen = [None], []

    @contextmanager
    def within(tag):
        inside[0] = tag
        try:
            yield
        finally:
            inside[0] = None

    fns = {name: (lambda name=name: seen.append((name, inside[0]))) for name in ("a", "b")}
    runner.time_interleaved(fns, budget_s=0, min_repeats=2,
                            contexts={"a": lambda: within("A"), "b": lambda: within("B")})
    assert seen == [("a", "A"), ("b", "B")] * 3
    assert inside[0] is None


def test_busy_run_takes_thread_counts_in_turn(monkeypatch):
    """With busy processes beside it, run() times a case's thread counts in turn,
    sample by sample (each call on the count of its sample), not one after the other."""
    monkeypatch.setattr(runner, "SAMPLE_S", 0.0)
    monkeypatch.setattr(runner, "PAUSE_S", 0.0)
    monkeypatch.setattr(runner, "gemm_peak", lambda n, dtype: 1.0)
    counts = []
    import seqkern

    monkeypatch.setattr(runner, "make_runner",
                        lambda case, impl: lambda: counts.append(seqkern.get_num_threads()))
    case = Case("rnn", (2, 5, 3, 4), "fwd")
    # one warm-up call per name and thread count, then 3 samples of one call each
    for busy, want in ((1, [1, 2] * 4), (0, [1] * 4 + [2] * 4)):
        counts.clear()
        results, _ = runner.run([case], [1, 2], impls=["seqkern"], budget_s=0, progress=False,
                                busy=busy)
        assert counts == want
        assert [r["threads"] for r in results] == [1, 2]
        assert all(len(r["times_s"]) == 3 for r in results)


def test_time_interleaved_sizes_samples_on_the_steady_state(monkeypatch):
    """A slow first call (a core waking up) must not shrink every sample to one
    call: the samples are sized on the faster of two warm-up calls. The runner's
    clock is a virtual one that only the calls advance, so the load on the
    machine cannot change the outcome."""
    import types

    now = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: now[0])
    monkeypatch.setattr(runner, "time", clock)
    monkeypatch.setattr(runner, "SAMPLE_S", 0.02)
    monkeypatch.setattr(runner, "PAUSE_S", 0.0)
    n = [0]

    def fn():
        n[0] += 1
        now[0] += 0.03 if n[0] == 1 else 0.001

    t = runner.time_interleaved({"f": fn}, budget_s=0, min_repeats=2)
    assert len(t["f"]) == 2
    assert n[0] >= 2 + 2 * 10               # two warm-up calls, then 2 samples of ~20 calls
    assert t["f"] == pytest.approx([0.001, 0.001])   # per call, without the slow first one


def test_sweep_cases_and_plots(tmp_path):
    """The sequence-length study's cases, and every chart written as a PNG."""
    from seqkern.bench.cases import sweep

    cases = sweep(quick=True)
    kernels = {c.kernel for c in cases}
    assert kernels == {"lstm", "attention"}
    assert {c.seq_len() for c in cases} == {64, 256, 1024}
    assert {c.shape[0] for c in cases if c.kernel == "lstm"} == {1, 32}
    pytest.importorskip("matplotlib")
    from seqkern.bench import plots

    small = [Case("lstm", (1, T, 8, 8), suite="sweep") for T in (4, 8)] + \
            [Case("attention", (1, 2, T, 8), suite="sweep") for T in (4, 8)] + \
            [Case("rnn", (2, 3, 4, 5), "fwd+bwd")]
    results, _ = runner.run(small, [1, 2], impls=["seqkern", "reference"], budget_s=0, progress=False)
    paths = plots.write_all(results, str(tmp_path))
    assert len(paths) == 5
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # no chart without its data: speed-ups need the reference or PyTorch, the
    # efficiency a second thread count
    results, _ = runner.run(small, [1], impls=["seqkern"], budget_s=0, progress=False)
    names = sorted(os.path.basename(p) for p in plots.write_all(results, str(tmp_path / "one")))
    assert names == ["latency_vs_length.png", "peak_fraction.png", "tokens_vs_length.png"]


# --- suite "layers" (--layers): seqkern.nn against PyTorch's modules ---------------------

def _gemm_flops(products):
    """2 m k n for each (m, k, n) product."""
    return sum(2.0 * m * k * n for m, k, n in products)


def test_layer_flop_counts():
    """Each layer case's FLOP count against its matrix products listed one by one."""
    B, T, I, H = 2, 3, 5, 7
    for kernel, G in (("nn.LSTM", 4), ("nn.GRU", 3)):
        products = []
        for layer_in in (I, 2 * H):             # layer 0 reads x, layer 1 both directions
            for _direction in range(2):
                products.append((B * T, layer_in, G * H))                # x_l W_ih^T
                products += [(B, H, G * H)] * T                          # h_{t-1} W_hh^T
        fwd = _gemm_flops(products)
        assert Case(kernel, (B, T, I, H), "fwd", suite="layers").flops() == fwd
        assert Case(kernel, (B, T, I, H), "fwd+bwd", suite="layers").flops() == 3 * fwd
    B, T, E, heads = 2, 3, 8, 2
    d = E // heads
    proj = [(B * T, E, E)] * 4                                           # q, k, v, out
    att = [(T, d, T), (T, T, d)] * (B * heads)                           # q k^T, p v per head
    mha = Case("nn.MHA", (B, T, E, heads), "fwd", suite="layers")
    assert mha.flops() == _gemm_flops(proj + att)
    assert Case("nn.MHA", (B, T, E, heads), "fwd+bwd", suite="layers").flops() == \
        3 * _gemm_flops(proj) + 3.5 * _gemm_flops(att)
    B, T, V, H = 2, 3, 5, 7
    lm = [(B * T, H, 4 * H), (B * T, H, 4 * H)] + [(B, H, 4 * H)] * (2 * T) + [(B * T, H, V)]
    assert Case("nn.LM-step", (B, T, V, H), "fwd+bwd", suite="layers").flops() == \
        3 * _gemm_flops(lm)
    assert mha.tokens() == 6 and mha.seq_len() == 3 and mha.legend == "B,T,E,heads"


def test_layer_cases():
    from seqkern.bench.cases import (LAYER_KERNELS, LM_SHAPES, MHA_SHAPES, QUICK_LAYERS,
                                     STACK_SHAPES, applies, layers)

    cases = layers()
    assert {c.kernel for c in cases} == set(LAYER_KERNELS)
    assert all(c.suite == "layers" and c.dtype == "float32" for c in cases)
    assert len(cases) == 2 * len(STACK_SHAPES) * 2 + len(MHA_SHAPES) * 2 + len(LM_SHAPES)
    assert {(c.shape, c.direction) for c in cases if c.kernel == "nn.LM-step"} == \
        {(s, "fwd+bwd") for s in LM_SHAPES}
    quick = layers(quick=True)
    assert len(quick) == sum(map(len, QUICK_LAYERS.values())) and set(quick) <= set(cases)
    assert {c.kernel for c in layers(kernels=["lstm"])} == {"nn.LSTM", "nn.LM-step"}
    assert {c.kernel for c in layers(kernels=["attention"])} == {"nn.MHA"}
    assert layers(kernels=["rnn"]) == []
    mha = [c for c in cases if c.kernel == "nn.MHA"][0]
    lstm = [c for c in cases if c.kernel == "nn.LSTM"][0]
    assert not applies(lstm, "reference") and not applies(mha, "reference")
    assert applies(lstm, "seqkern-loop") and not applies(mha, "seqkern-loop")
    assert applies(lstm, "seqkern-packed") and not applies(mha, "seqkern-blas")
    assert not applies(Case("rnn", (1, 2, 3, 4)), "seqkern-loop")
    with pytest.raises(ValueError, match="does not run"):
        make_runner(mha, "seqkern-loop")


@pytest.mark.parametrize("kernel,shape", [("nn.LSTM", (2, 9, 3, 4)), ("nn.GRU", (2, 9, 3, 4)),
                                          ("nn.MHA", (2, 5, 8, 2)),
                                          ("nn.LM-step", (3, 9, 6, 4))])
def test_layer_runners_agree(kernel, shape):
    """Every implementation of a layer case computes the same thing: seqkern, the
    plain loop and (where installed) PyTorch's modules loaded with seqkern's
    weights; for the LM step, the losses of two steps in a row (the second after
    clipping and Adam)."""
    impls = ["seqkern", "seqkern-loop", "seqkern-packed"] + (["torch"] if torch_available() else [])
    directions = ("fwd+bwd",) if kernel == "nn.LM-step" else ("fwd", "fwd+bwd")
    for direction in directions:
        case = Case(kernel, shape, direction, "float64", suite="layers")
        got = {}
        for impl in impls:
            if not cases.applies(case, impl):
                continue
            fn = make_runner(case, impl)
            calls = 2 if kernel == "nn.LM-step" else 1
            got[impl] = [np.asarray(fn() if impl != "torch" else fn().detach().numpy())
                         for _ in range(calls)]
        want = got.pop("seqkern")
        B, T = shape[:2]
        expected_shape = {"nn.LM-step": (), "nn.MHA": (T, B, shape[2])}.get(
            kernel, (T, B, 2 * shape[3]) if direction == "fwd" else (T, B, shape[2]))
        assert want[0].shape == expected_shape        # out, dx or the loss
        for impl, values in got.items():
            for g, w in zip(values, want):
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11, err_msg=impl)


def _tiny_layers(monkeypatch):
    """Tiny layer cases, timed in short samples, against a stand-in GEMM peak."""
    monkeypatch.setattr(cases, "STACK_SHAPES", [(2, 9, 3, 4)])
    monkeypatch.setattr(cases, "MHA_SHAPES", [(2, 5, 8, 2)])
    monkeypatch.setattr(cases, "LM_SHAPES", [(3, 9, 6, 4)])
    monkeypatch.setattr(runner, "SAMPLE_S", 0.002)
    monkeypatch.setattr(runner, "PAUSE_S", 0.005)
    monkeypatch.setattr(runner, "gemm_peak", lambda n_threads, dtype: 100.0 * n_threads)


@pytest.mark.parametrize("with_torch", [False, True])
def test_layers_cli(tmp_path, monkeypatch, capsys, with_torch):
    """--layers --no-grid: every layer case at 1 and 2 threads, with "-" and None
    for the implementations that do not apply; without PyTorch, no torch rows."""
    if with_torch and not torch_available():
        pytest.skip("PyTorch is not installed")
    _tiny_layers(monkeypatch)
    if not with_torch:
        monkeypatch.setattr(cases, "torch_available", lambda: False)
        monkeypatch.setattr(runner, "torch_available", lambda: False)
    path = tmp_path / "layers.json"
    rc = cli.main(["--layers", "--no-grid", "--threads", "1,2", "--budget", "0",
                   "--json", str(path)])
    assert rc == 0
    doc = json.loads(path.read_text())
    results = doc["results"]
    impls = ["seqkern", "seqkern-loop"] + (["torch"] if with_torch else [])
    assert {r["case"] for r in results} == {c.name for c in cases.layers()}
    assert len(results) == len(cases.layers()) * 2 * len(impls)
    for r in results:
        ran = cases.applies(cases.Case(r["kernel"], tuple(r["shape"]), r["direction"],
                                       r["dtype"], suite="layers"), r["impl"])
        assert ran == (r["impl"] != "seqkern-loop" or r["kernel"] != "nn.MHA")
        if not ran:
            assert r["median_s"] is None and r["gflops"] is None and r.get("skipped")
            continue
        assert r["median_s"] > 0 and r["gflops"] > 0 and r["parallel_efficiency"] > 0
        assert (r["speedup_vs_torch"] is not None) == with_torch
        assert r["speedup_vs_reference"] is None
        assert (r["speedup_vs_loop"] is not None) == (r["kernel"] != "nn.MHA")
    printed = capsys.readouterr().out
    assert "Layers (seqkern.nn)" in printed
    skipped = [line for line in printed.splitlines() if "seqkern-loop" in line and "nn.MHA" in line]
    # (case: kernel, shape, direction, dtype; impl; threads; median ms)
    assert len(skipped) == 2 * 2 and all(line.split()[6] == "-" for line in skipped)
    assert all(ratio == pytest.approx(1) for _, ratio in runner.compare(str(path), results))

    # an implementation without the layers (the reference): a row of "-" per case
    rc = cli.main(["--layers", "--no-grid", "--kernels", "attention", "--threads", "1",
                   "--budget", "0", "--impls", "seqkern,reference"])
    assert rc == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " reference " in line]
    assert len(lines) == 2 and all(line.split()[6] == "-" for line in lines)


def test_forced_paths_reach_attention_too():
    """seqkern-blas and seqkern-packed force attention's tile products as well as
    the recurrent kernels' (else an attention row would compare seqkern with
    itself), and leave both choices as they found them."""
    import seqkern.attention as attention
    from seqkern import _step_gemm
    from seqkern.bench.cases import _forcing_path

    seen = []
    probe = lambda: seen.append((attention._products_on_blas(), _step_gemm.step_gemm_mode()))
    before = _step_gemm.step_gemm_mode()
    _forcing_path(probe, "seqkern-blas")()
    _forcing_path(probe, "seqkern-packed")()
    assert seen == [(True, _step_gemm.BLAS), (False, _step_gemm.PACKED)]
    assert _step_gemm.step_gemm_mode() == before
    assert _forcing_path(probe, "seqkern") is probe
