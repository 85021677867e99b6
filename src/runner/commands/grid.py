"""The option grid at runner's defaults: does every combination of model x activation x init x norm x
regularization that the lectures consider trainable train with no optimizer, lr or batch size given?

    python -m runner.grid                      # the whole grid, 2 epochs each on the synthetic task (~10 min, 2 cores)
    python -m runner.grid --cheap              # the cheap rows only (what the test suite runs)
    python -m runner.grid --epochs 3 -- data.root=/path/to/cifar data.train_size=5000   # on CIFAR-10

Each row is one run with the row's overrides and nothing else (the defaults choose the optimizer, its lr, the
schedule, the batch size). A row passes when the run completed (it did not diverge) and its test accuracy clears
twice chance. Left out on purpose: init=constant and init=zeros (they never break the symmetry between units:
`python -m runner.lesson constant_init`), a deep sigmoid net without normalization, which the lectures present as
what not to train, and VGG without normalization at PyTorch's default init (its signal fades through 13 plain
convolutions: that row uses He init, as the lectures prescribe for deep ReLU nets).
"""

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from runner.commands.lesson import split_user
from runner.commands.transfer_grid import compose_run
from runner.config import CONFIG_DIR, register_resolvers

# (name, overrides, cheap). cheap: an MLP or a small CNN, seconds on 2 CPU cores (the test suite runs these).
_ACTIVATION_INITS = [
    ("relu", "he_normal"), ("leaky_relu", "he_normal"), ("prelu", "he_uniform"), ("rrelu", "he_normal"),
    ("elu", "he_normal"), ("selu", "lecun_normal"), ("gelu", "default"), ("silu", "xavier_uniform"),
    ("tanh", "xavier_normal"), ("sigmoid", "xavier_normal"), ("maxout", "default"),
]


def combinations() -> list[tuple[str, list[str], bool]]:
    """The grid: every activation with its usual init on an MLP with and without batch norm, every norm on the CNN
    with several activations and inits, deeper nets (ResNet, VGG) with and without normalization, and each
    regularizer on a net it applies to."""
    rows = []
    for act, init in _ACTIVATION_INITS:
        for norm in ("none", "batch"):
            if act == "sigmoid" and norm == "none":
                continue  # the lectures' example of a net not to train (vanishing gradients): see the lessons
            rows.append((f"mlp {act} {init} norm={norm}",
                         ["model=mlp", f"activation={act}", f"init={init}", f"norm={norm}"], True))
    rows.append(("mlp selu lecun_normal alpha_dropout (self-normalizing)",
                 ["model=mlp", "activation=selu", "init=lecun_normal", "norm=none", "regularization=[alpha_dropout]"],
                 True))
    for act, init, norm in [("relu", "he_normal", "none"), ("relu", "default", "group"), ("relu", "default", "layer"),
                            ("prelu", "orthogonal", "group"), ("elu", "he_uniform", "none"),
                            ("tanh", "xavier_uniform", "none"), ("tanh", "xavier_uniform", "batch"),
                            ("leaky_relu", "he_normal", "layer"), ("gelu", "lecun_uniform", "group"),
                            ("silu", "orthogonal", "none"), ("selu", "lecun_normal", "none"),
                            ("sigmoid", "xavier_normal", "batch")]:
        rows.append((f"cnn {act} {init} norm={norm}",
                     ["model=cnn", f"activation={act}", f"init={init}", f"norm={norm}"], True))
    for reg in ("dropout", "dropconnect", "gaussian_dropout", "l1", "elastic_net", "max_norm", "label_smoothing",
                "weight_decay", "grad_clip", "uout"):
        rows.append((f"cnn relu norm=none regularization=[{reg}]",
                     ["model=cnn", "norm=none", f"regularization=[{reg}]"], True))
    rows.append(("cnn relu norm=batch regularization=[dropout,l2]",
                 ["model=cnn", "regularization=[dropout,l2]"], True))
    for model in ("resnet", "vgg"):
        for norm in ("none", "batch", "group"):
            # Without normalization VGG's 13 plain convolutions need He init: PyTorch's default shrinks the signal by
            # about 0.6 per layer (runner.lesson init_depth_std) and it stayed at chance. A ResNet's residual sums
            # grow the signal instead: there He init stayed at chance and the default trained.
            init = ["init=he_normal"] if norm == "none" and model == "vgg" else []
            rows.append((f"{model} relu {'he_normal ' if init else ''}norm={norm}",
                         [f"model={model}", *init, f"norm={norm}"], False))
    rows.append(("resnet relu norm=batch regularization=[stochastic_depth]",
                 ["model=resnet", "regularization=[stochastic_depth]"], False))
    return rows


SYNTHETIC = ["data=synthetic", "trainer.progress=false", "diagnostics.every_steps=0", "trainer.save_best=false"]


def run_row(overrides: list[str], run_dir: Path, base: list[str], epochs: int) -> tuple[dict, float]:
    """One row's run, in this process: its metrics.json, and the peak lr the defaults chose for it."""
    import hydra

    # torch from here on: --help and the listing answer at once
    from runner.engine.train import fit

    register_resolvers()
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg, choices = compose_run(base, [f"trainer.epochs={epochs}", *overrides])
    return fit(cfg, run_dir, choices), float(cfg.optimizer.lr)


def verdict(metrics: dict, num_classes: int = 10) -> str:
    """ok, diverged, at chance, or the run's other status."""
    if metrics.get("status") != "completed":
        return str(metrics.get("status"))
    return "ok" if (metrics.get("test_acc") or 0.0) >= 2.0 / num_classes else "at chance"


def run_grid(rows, base: list[str], epochs: int, out: Path, echo=print) -> list[dict]:
    import logging

    results = []
    level = logging.getLogger("runner").level
    logging.getLogger("runner").setLevel(logging.ERROR)
    try:
        for i, (name, overrides, _) in enumerate(rows):
            started = time.perf_counter()
            metrics, lr = run_row(overrides, out / f"{i:02d}", base, epochs)
            row = {"name": name, "overrides": overrides, "status": metrics.get("status"),
                   "test_acc": metrics.get("test_acc"), "lr": lr,
                   "verdict": verdict(metrics), "wall_s": time.perf_counter() - started}
            results.append(row)
            acc = "-" if row["test_acc"] is None else f"{row['test_acc']:.3f}"
            echo(f"  {name:58s} {row['verdict']:10s} test acc {acc:>6s}  ({row['wall_s']:.0f} s)")
            if row["status"] == "interrupted":  # SIGINT or SIGTERM stopped the run: it stops the grid too
                raise KeyboardInterrupt(f"the grid was stopped in row {name!r}")
    finally:
        logging.getLogger("runner").setLevel(level)
    return results


def table(results: list[dict]) -> str:
    lines = ["| combination | result | test acc |", "|---|---|---|"]
    for r in results:
        acc = "-" if r["test_acc"] is None else f"{r['test_acc']:.3f}"
        lines.append(f"| `{' '.join(r['overrides'])}` | {r['verdict']} | {acc} |")
    bad = sum(r["verdict"] != "ok" for r in results)
    lines.append(f"\n{len(results) - bad} of {len(results)} train; {bad} do not.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv, user = split_user(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m runner.grid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cheap", action="store_true", help="only the cheap rows (MLP and small CNN)")
    ap.add_argument("--match", help="only the rows whose name matches this regular expression, e.g. 'norm=none'")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    rows = [r for r in combinations() if (r[2] or not args.cheap) and (not args.match or re.search(args.match, r[0]))]
    base = [*SYNTHETIC, *user] if not any(u.startswith("data.root=") for u in user) else \
        ["trainer.progress=false", "diagnostics.every_steps=0", "trainer.save_best=false", *user]
    print(f"the option grid at runner's defaults: {len(rows)} combinations, {args.epochs} epochs each, "
          f"overrides {' '.join(base)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_grid(rows, base, args.epochs, Path(tmp))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"base": base, "epochs": args.epochs, "rows": results}, indent=2))
    return 0 if all(r["verdict"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
