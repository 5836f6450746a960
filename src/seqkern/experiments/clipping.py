"""clipping (seed 3.1, 6.2 "training instability"): when an RNN's gradients
explode, plain gradient descent takes steps as large as the gradient and
training blows up; clipping the gradient's norm (``seqkern.nn.clip_grad_norm_``)
bounds each step and training goes on.

A tanh RNN with W_hh rescaled to spectral radius ``radius`` (> 1: the
exploding regime of the gradients experiment) trained by SGD on the adding
problem, twice from the same initial weights on the same batches: without
clipping, and with the total gradient norm clipped to ``max_norm``. Every
step's loss and gradient norm (before clipping) is recorded; a run whose loss
is no longer finite stops there.
"""

import math

import numpy as np

from seqkern.experiments import training
from seqkern.experiments.common import Check, Verdict, new_figure

TITLE = "training an RNN whose gradients explode, with and without gradient clipping"
CLAIM = ("exploding gradients make RNN training unstable, "
         "and clipping the gradient norm keeps it stable")
# A training loss this many times the first step's (or not finite) is a blow-up.
BLOW_UP = 10.0

SIZES = {
    "tiny": {"T": 10, "hidden": 8, "radius": 3.0, "steps": 20, "batch": 8, "lr": 0.1,
             "max_norm": 1.0, "eval": 64},
    "quick": {"T": 50, "hidden": 32, "radius": 1.5, "steps": 300, "batch": 32, "lr": 0.1,
              "max_norm": 1.0, "eval": 512},
    "full": {"T": 100, "hidden": 64, "radius": 1.5, "steps": 1500, "batch": 32, "lr": 0.1,
             "max_norm": 1.0, "eval": 1024},
}


def measure(cfg, ctx):
    task = training.Task("adding", cfg["T"])
    ctx.say(f"tanh RNN, H = {cfg['hidden']}, W_hh at spectral radius {cfg['radius']}; adding "
            f"problem T = {cfg['T']}; SGD lr {cfg['lr']}, {cfg['steps']} steps of batch "
            f"{cfg['batch']}")
    ctx.table("run", "max norm", "median norm", "max loss", "steps ok", "final MSE", "/ chance")
    runs = {}
    bar = ctx.progress(2 * cfg["steps"], "training")
    for name, clip in (("no clipping", None), (f"clip {cfg['max_norm']:g}", cfg["max_norm"])):
        model = training.make_model("rnn", task, cfg["hidden"], ctx.rng("model"), cfg["radius"])
        with np.errstate(over="ignore", invalid="ignore"):   # the blow-up is the point
            losses, norms = training.train(model, task, cfg["steps"], cfg["batch"],
                                           ctx.rng("data"), lr=cfg["lr"], clip=clip,
                                           optimizer="sgd", on_step=bar.update)
            final = training.evaluate(model, task, ctx.rng("eval"), cfg["eval"])
        finite = [v for v in losses if math.isfinite(v)]
        fnorms = [v for v in norms if math.isfinite(v)]
        run = {"clip": clip, "losses": losses, "grad_norms": norms,
               "max_norm": max(fnorms, default=math.nan),
               "median_norm": float(np.median(fnorms)) if fnorms else math.nan,
               "max_loss": max(finite, default=math.nan),
               "finite_steps": len(finite), "final_mse": final}
        runs[name] = run
        ctx.row(name, run["max_norm"], run["median_norm"], run["max_loss"], len(finite),
                final, final / task.chance)
    ctx.end_progress()
    return {"chance_mse": task.chance, "max_norm": cfg["max_norm"], "steps": cfg["steps"],
            "runs": runs}


def blew_up(run):
    """Whether a loss was not finite, or rose to BLOW_UP times the first step's."""
    losses = run["losses"]
    return run["finite_steps"] < len(losses) or not run["max_loss"] < BLOW_UP * losses[0]


def verdict(numbers):
    runs = list(numbers["runs"].values())
    free = next(r for r in runs if r["clip"] is None)
    clipped = next(r for r in runs if r["clip"] is not None)
    threshold = numbers["max_norm"]

    def final(r):
        return r["final_mse"] if math.isfinite(r["final_mse"]) else math.inf

    def describe(r):
        return (f"{r['finite_steps']}/{len(r['losses'])} steps finite, "
                f"largest loss {r['max_loss']:.3g}, first {r['losses'][0]:.3g}")

    return Verdict(CLAIM, [
        Check(f"without clipping the gradient norm exceeds 10x the threshold {threshold:g}",
              free["max_norm"] >= 10 * threshold, f"largest {free['max_norm']:.3g}"),
        Check(f"without clipping training blows up (a loss >= {BLOW_UP:g}x the first, or not "
              "finite)", blew_up(free), describe(free)),
        Check("with clipping it does not", not blew_up(clipped), describe(clipped)),
        Check("with clipping the final error is lower",
              final(clipped) < final(free),
              f"MSE {clipped['final_mse']:.4g} against {free['final_mse']:.4g}"),
    ])


def figure(numbers):
    fig, axes = new_figure(2, 1, (12, 4.5))
    for name, r in numbers["runs"].items():
        steps = np.arange(1, len(r["losses"]) + 1)
        axes[0, 0].plot(steps, np.asarray(r["losses"], float), label=name, lw=0.8)
        axes[0, 1].plot(steps, np.asarray(r["grad_norms"], float), label=name, lw=0.8)
    axes[0, 0].axhline(numbers["chance_mse"], color="k", ls="--", lw=0.8, label="chance")
    axes[0, 1].axhline(numbers["max_norm"], color="k", ls=":", lw=0.8, label="clip threshold")
    for ax, what in zip(axes[0], ("training loss (MSE)", "gradient norm before clipping")):
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(what)
        ax.legend(fontsize=7)
    axes[0, 0].set_title("loss")
    axes[0, 1].set_title("gradient norm")
    return fig
