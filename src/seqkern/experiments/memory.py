"""memory (seed 4.3, 7.1): a plain RNN forgets across long distances; the LSTM
holds longer; attention, which looks back at every step directly, does not
degrade with the distance.

Tasks with a known answer and a known chance level (see
:mod:`seqkern.experiments.training`): the adding problem (chance MSE 1/6) and
the copy-memory task (chance cross-entropy 10 log 8 / (T + 20)), at several
lengths T. Each model (Elman RNN, LSTM, GRU, one causal self-attention layer,
the same width) gets the same budget: the same number of Adam steps on the
same batches. The final error is the mean loss on fresh sequences, divided by
the chance level: 1 is chance, 0 is solved. A model "solves" a length when
its relative error is at most SOLVED.
"""

import numpy as np

from seqkern.experiments import training
from seqkern.experiments.common import Check, Verdict, new_figure

TITLE = "long-range memory: the adding problem and the copy task against length"
CLAIM = ("the RNN fails beyond some length where the LSTM holds longer "
         "and attention does not degrade")
KINDS = ("rnn", "lstm", "gru", "attention")
SOLVED = 0.2  # relative error (error / chance) at or below which a length counts as solved

SIZES = {
    "tiny": {"tasks": ["adding", "copy"], "lengths": [5, 10], "hidden": 8, "steps": 5,
             "batch": 8, "lr": 1e-2, "eval": 32},
    "quick": {"tasks": ["adding"], "lengths": [10, 50, 100, 200], "hidden": 32, "steps": 400,
              "batch": 32, "lr": 1e-2, "eval": 512},
    "full": {"tasks": ["adding", "copy"], "lengths": [10, 50, 100, 200], "hidden": 48,
             "steps": 1000, "batch": 32, "lr": 1e-2, "eval": 1024},
}


def measure(cfg, ctx):
    runs = []
    ctx.say(f"{cfg['steps']} Adam steps (lr {cfg['lr']}) of batch {cfg['batch']} per model and "
            f"length; width {cfg['hidden']}; error / chance on {cfg['eval']} fresh sequences")
    ctx.table("task", "T", "model", "error", "chance", "relative", "solved")
    bar = ctx.progress(len(cfg["tasks"]) * len(cfg["lengths"]) * len(KINDS) * cfg["steps"],
                       "training")
    for task_name in cfg["tasks"]:
        for T in cfg["lengths"]:
            task = training.Task(task_name, T)
            for kind in KINDS:
                rng = ctx.rng("memory", task_name, T, kind)
                model = training.make_model(kind, task, cfg["hidden"], rng)
                # The same batches for every model: a generator of its own, same key.
                data = ctx.rng("data", task_name, T)
                losses, _ = training.train(model, task, cfg["steps"], cfg["batch"], data,
                                           lr=cfg["lr"], on_step=bar.update)
                err = training.evaluate(model, task, ctx.rng("eval", task_name, T), cfg["eval"])
                rel = err / task.chance
                runs.append({"task": task_name, "T": T, "model": kind, "error": err,
                             "chance": task.chance, "relative": rel, "losses": losses})
                ctx.row(task_name, T, kind, err, task.chance, rel, bool(rel <= SOLVED))
    ctx.end_progress()
    return {"solved_below": SOLVED, "runs": runs}


def relative(numbers, task, model):
    """{T: relative error} of one model on one task."""
    return {r["T"]: r["relative"] for r in numbers["runs"]
            if r["task"] == task and r["model"] == model}


def reach(numbers, task, model):
    """The longest T up to which the model solves every tested length (0 if not
    even the shortest)."""
    longest = 0
    for T, rel in sorted(relative(numbers, task, model).items()):
        if not rel <= numbers["solved_below"]:     # NaN counts as failed
            break
        longest = T
    return longest


def verdict(numbers):
    checks = []
    tasks = list(dict.fromkeys(r["task"] for r in numbers["runs"]))
    for task in tasks:
        lengths = sorted(relative(numbers, task, "rnn"))
        r = {k: reach(numbers, task, k) for k in KINDS}
        att = relative(numbers, task, "attention")
        checks += [
            # "fails beyond some length": it holds below it, so an RNN that solves not
            # even the shortest length leaves the check undecided
            Check(f"{task}: the RNN fails beyond some tested length",
                  None if r["rnn"] == 0 else r["rnn"] < lengths[-1],
                  f"RNN solves up to T = {r['rnn']}" if r["rnn"] else
                  f"RNN solves no tested length, not even T = {lengths[0]}"),
            Check(f"{task}: the LSTM holds longer than the RNN",
                  r["lstm"] > r["rnn"], f"LSTM up to T = {r['lstm']}, RNN {r['rnn']}"),
            Check(f"{task}: attention solves every length",
                  all(v <= numbers["solved_below"] for v in att.values()),
                  "relative errors " + ", ".join(f"T={T}: {v:.3f}" for T, v in sorted(att.items()))),
        ]
    return Verdict(CLAIM, checks)


def figure(numbers):
    tasks = list(dict.fromkeys(r["task"] for r in numbers["runs"]))
    fig, axes = new_figure(2, len(tasks), (12, 4.5 * len(tasks)))
    for row, task in enumerate(tasks):
        ax = axes[row, 0]
        for kind in KINDS:
            rel = sorted(relative(numbers, task, kind).items())
            ax.plot([t for t, _ in rel], [v for _, v in rel], marker="o", label=kind)
        ax.axhline(1.0, color="k", ls="--", lw=0.8, label="chance")
        ax.axhline(numbers["solved_below"], color="k", ls=":", lw=0.8, label="solved")
        ax.set_xscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("final error / chance")
        ax.set_title(f"{task}: final error against length")
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        longest = max(r["T"] for r in numbers["runs"] if r["task"] == task)
        for r in numbers["runs"]:
            if r["task"] == task and r["T"] == longest:
                ax.plot(np.arange(1, len(r["losses"]) + 1), np.asarray(r["losses"]) / r["chance"],
                        label=r["model"], lw=0.8)
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss / chance")
        ax.set_title(f"{task}: learning curves at T = {longest}")
        ax.legend(fontsize=7)
    return fig
