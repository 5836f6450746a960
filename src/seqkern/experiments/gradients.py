"""gradients (seed 3.1, 4.3): through a plain RNN's steps the gradient shrinks
or grows geometrically: dh_t/dh_0 is a product of t Jacobians, vanishing when
they are below 1 (W_hh's spectral radius 0.5), exploding above (1.5); the
LSTM's and GRU's gates let it through for longer.

For each model, ||dL/dx_t|| against the distance T - 1 - t from the last
step, where L = <u, h_T> for a fixed random unit vector u per sequence (a loss
on the last step only), from the backward kernels (rnn/lstm/gru_backward's dx,
in float64), averaged over a batch of adding-problem inputs. The per-step
factor is exp(slope) of a least-squares line through log ||dL/dx_t|| against
the distance. Measured at initialisation (PyTorch's, W_hh rescaled for the
RNNs) and again after training each model on the adding problem (the memory
experiment's task).
"""

import numpy as np

from seqkern.experiments import training
from seqkern.experiments.common import Check, Verdict, new_figure

TITLE = "gradient norm against distance: vanishing and exploding through time"
CLAIM = ("gradients vanish (radius < 1) or explode (radius > 1) through a plain RNN's steps, "
         "and the LSTM's and GRU's gates carry them further than a vanishing RNN")
MODELS = (("rnn r=0.5", "rnn", 0.5), ("rnn r=1.0", "rnn", 1.0), ("rnn r=1.5", "rnn", 1.5),
          ("lstm", "lstm", None), ("gru", "gru", None))
VANISHED = 1e-3  # the gradient over the whole probe has vanished below this fraction

SIZES = {
    "tiny": {"hidden": 16, "T": 30, "batch": 8, "train_T": 10, "train_steps": 10,
             "train_batch": 16},
    "quick": {"hidden": 64, "T": 100, "batch": 32, "train_T": 30, "train_steps": 400,
              "train_batch": 32},
    "full": {"hidden": 64, "T": 200, "batch": 64, "train_T": 50, "train_steps": 1500,
             "train_batch": 32},
}


def grad_norms(rec, x, u):
    """||dL/dx_t|| (T,) for L = <u, h_T>, averaged over the batch, in float64."""
    from seqkern import nn

    cls = type(rec)
    r64 = cls(rec.input_size, rec.hidden_size, dtype=np.float64, rng=0)
    r64.load_state_dict(rec.state_dict())
    x = x.astype(np.float64)
    out, _, cache = r64.forward(x)
    d_h_n = u[None]
    d_final = (d_h_n, None) if isinstance(r64, nn.LSTM) else d_h_n
    dx, _ = r64.backward(None, d_final, cache)
    return np.linalg.norm(dx, axis=2).mean(axis=1)


def by_distance(norms):
    """norms[t] (T,) -> norms by distance d = T - 1 - t."""
    return np.asarray(norms)[::-1]


def fit_factor(curve):
    """exp of the slope of log(curve) against distance (the per-step factor), over
    the finite, positive points; NaN with fewer than two."""
    curve = np.asarray(curve, float)
    d = np.arange(len(curve))
    ok = np.isfinite(curve) & (curve > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.exp(np.polyfit(d[ok], np.log(curve[ok]), 1)[0]))


def measure(cfg, ctx):
    H, T, B = cfg["hidden"], cfg["T"], cfg["batch"]
    probe_rng = ctx.rng("probe")
    x, _ = training.adding_batch(T, B, probe_rng)
    u = probe_rng.standard_normal((B, H))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    task = training.Task("adding", cfg["train_T"])
    ctx.say(f"||dL/dx_t|| against distance from the loss, T = {T}, H = {H}; training: "
            f"adding problem T = {task.T}, {cfg['train_steps']} Adam steps (lr 1e-2)")
    ctx.table("model", "when", "factor/step", "ratio d=T-1", "d=10", "d=50", "train MSE")
    results = {}
    bar = ctx.progress(len(MODELS) * cfg["train_steps"], "training")
    for name, kind, radius in MODELS:
        rng = ctx.rng("model", name)
        model = training.make_model(kind, task, H, rng, radius)
        entry = {}
        for when in ("init", "trained"):
            if when == "trained":
                losses, _ = training.train(model, task, cfg["train_steps"], cfg["train_batch"],
                                           rng, lr=1e-2, on_step=bar.update)
                entry["train_losses"] = losses
                entry["final_mse"] = training.evaluate(model, task, rng)
            curve = by_distance(grad_norms(model.rec, x, u))
            rel = curve / curve[0]
            entry[when] = {"norm_by_distance": curve, "factor": fit_factor(curve),
                           "ratio_last": float(rel[-1])}
            ctx.row(name, when, entry[when]["factor"], rel[-1],
                    rel[min(10, T - 1)], rel[min(50, T - 1)],
                    entry.get("final_mse", float("nan")))
        results[name] = entry
    ctx.end_progress()
    return {"T": T, "hidden": H, "train_T": task.T, "chance_mse": task.chance,
            "models": results}


def verdict(numbers):
    m = numbers["models"]
    van, exp = m["rnn r=0.5"], m["rnn r=1.5"]
    checks = [
        Check(f"RNN at radius 0.5: the gradient over {numbers['T'] - 1} steps falls below "
              f"{VANISHED} of its start (at initialisation)",
              van["init"]["ratio_last"] < VANISHED,
              f"ratio {van['init']['ratio_last']:.2e}, factor {van['init']['factor']:.3f}/step"),
        Check("RNN at radius 1.5: the gradient grows with distance (factor > 1, at "
              "initialisation)", exp["init"]["factor"] > 1,
              f"factor {exp['init']['factor']:.3f}/step, ratio {exp['init']['ratio_last']:.2e}"),
    ]
    for when in ("init", "trained"):
        f = {k: m[k][when]["factor"] for k in ("rnn r=0.5", "lstm", "gru")}
        checks.append(Check(f"LSTM and GRU decay more slowly than the RNN at radius 0.5 ({when})",
                            f["lstm"] > f["rnn r=0.5"] and f["gru"] > f["rnn r=0.5"],
                            ", ".join(f"{k} {v:.3f}" for k, v in f.items())))
    return Verdict(CLAIM, checks)


def figure(numbers):
    fig, axes = new_figure(2, 1, (12, 4.5))
    for ax, when in zip(axes[0], ("init", "trained")):
        for name, entry in numbers["models"].items():
            curve = np.asarray(entry[when]["norm_by_distance"], float)
            ax.plot(np.arange(len(curve)), curve / curve[0],
                    label=f"{name} ({entry[when]['factor']:.3f}/step)")
        ax.set_yscale("log")
        ax.set_xlabel("distance T - 1 - t from the loss (steps)")
        ax.set_ylabel("||dL/dx_t|| / ||dL/dx_T||")
        ax.set_title("at initialisation" if when == "init"
                     else f"after training on the adding problem (T={numbers['train_T']})")
        ax.legend(fontsize=7)
    return fig
