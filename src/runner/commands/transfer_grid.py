"""The lecture's 2x2 transfer grid (little / much data x similar / different task) in one command:

    python -m runner.transfer_grid                                   # CIFAR-10 under data/ (or RUNNER_DATA_DIR)
    python -m runner.transfer_grid 'overrides=["data.root=path/to/folder","model=resnet"]' epochs=15

Pretrains once (configs/transfer_grid.yaml: pretrain_classes, first half of their images; supervised or as an
autoencoder), then runs each `settings` entry (scratch = the from-scratch baseline, or a transfer= option) in each
of the four cells, on the second half of the images. Each run is a full runner run in its own subdirectory; the
grid directory holds results.csv and results.md (test accuracy per cell and setting), and `tensorboard --logdir
<grid dir>` shows every run's curves side by side.
"""

import csv
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner.config import CONFIG_DIR, ConfigError, register_resolvers, validate

register_resolvers()
log = logging.getLogger("runner")


def _classes(values) -> str:
    return "[" + ",".join(str(int(c)) for c in values) + "]"


def plan(grid: DictConfig, pretrain_dir: Path) -> list[dict]:
    """The pretraining run, then one run per cell and setting: {name, cell, setting, overrides}.

    The pretraining run has seed `grid.seed`, every later run seed + 1. A transfer run with the pretraining run's
    seed builds its "new" output layer exactly as the pretraining run built its initial one (same seed, same
    shapes): on the similar task a head already aligned with the trained one (cosine 0.78), so the transfer started
    from a loss of 1.22 instead of ln 5 = 1.61 and looked better than it is. The scratch runs share the transfer
    runs' seed, so a cell compares its settings on the same initial head and the same batches."""
    bad = [o for o in grid.overrides if str(o).split("=", 1)[0].lstrip("+~") == "seed"]
    if bad:
        raise ConfigError(f"overrides has {bad[0]}: the grid sets each run's seed itself (the pretraining run seed, "
                          "the others seed + 1); give the grid's `seed=<n>` instead.")
    pre = [f"data.classes={_classes(grid.pretrain_classes)}", "data.train_half=first",
           f"trainer.epochs={grid.pretrain_epochs}", f"seed={grid.seed}"]
    if grid.pretrain == "autoencoder":
        pre.append("objective=autoencoder")
    elif grid.pretrain != "supervised":
        raise ConfigError(f"pretrain={grid.pretrain!r} is invalid: allowed: supervised, autoencoder. Change it with "
                          "`pretrain=<value>` on the command line.")
    runs = [{"name": "pretrain", "similarity": "", "amount": "", "setting": "pretrain", "overrides": pre}]
    for similarity, classes in (("similar", grid.pretrain_classes), ("different", grid.other_classes)):
        for amount, per_class in (("little", grid.little_per_class), ("much", grid.much_per_class)):
            data = [f"data.classes={_classes(classes)}", "data.train_half=second", f"data.per_class={per_class}",
                    f"trainer.epochs={grid.little_epochs if amount == 'little' else grid.epochs}",
                    f"seed={grid.seed + 1}"]
            for setting in grid.settings:
                weights = [] if setting == "scratch" else [f"model.pretrained={pretrain_dir}", f"transfer={setting}"]
                runs.append({"name": f"{similarity}_{amount}_{setting}", "similarity": similarity, "amount": amount,
                             "per_class": per_class, "setting": setting, "overrides": data + weights})
    return runs


def compose_run(user_overrides: list[str], overrides: list[str]) -> tuple[DictConfig, dict]:
    """The runner config of one run (the root config, the user's overrides, the run's), and its group choices."""
    cfg = hydra.compose("config", overrides=[*user_overrides, *overrides], return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    validate(cfg)
    return cfg, choices


def write_tables(rows: list[dict], grid_dir: Path, settings: list[str]) -> str:
    """results.csv (one row per run) and results.md (cells x settings, test accuracy); returns the markdown."""
    keys = ["name", "similarity", "amount", "per_class", "setting", "test_acc", "best_val_acc", "epochs_completed",
            "wall_time_s", "run_dir"]
    with open(grid_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| data | task | " + " | ".join(settings) + " |", "|---|---|" + "---|" * len(settings)]
    for amount in ("little", "much"):
        for similarity in ("similar", "different"):
            cell = {r["setting"]: r for r in rows if r["amount"] == amount and r["similarity"] == similarity}
            if not cell:
                continue
            per_class = next(iter(cell.values()))["per_class"]
            accs = [f"{cell[s]['test_acc']:.3f}" if cell.get(s, {}).get("test_acc") is not None else "-"
                    for s in settings]
            lines.append(f"| {amount} ({per_class}/class) | {similarity} | " + " | ".join(accs) + " |")
    pre = next(r for r in rows if r["setting"] == "pretrain")
    note = (f"\nTest accuracy of each run (pretraining: {pre['overrides']}, "
            + (f"test acc {pre['test_acc']:.3f}" if pre.get("test_acc") is not None
               else f"reconstruction mse {pre.get('final_val_loss', float('nan')):.4f}") + ").\n")
    text = "\n".join(lines) + "\n" + note
    (grid_dir / "results.md").write_text(text)
    return text


def run_grid(grid: DictConfig, grid_dir: Path) -> list[dict]:
    # torch from here on: the grid's config is checked before it loads
    from runner.engine.train import fit

    user = list(grid.overrides)
    runs = plan(grid, grid_dir / "pretrain")
    configs = [compose_run(user, r["overrides"]) for r in runs[:1]]  # later runs need the pretrained weights to exist
    rows = []
    for i, r in enumerate(runs):
        cfg, choices = configs[0] if i == 0 else compose_run(user, r["overrides"])
        run_dir = grid_dir / r["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        log.info("transfer grid: run %d/%d %s (%s)", i + 1, len(runs), r["name"], " ".join(r["overrides"]))
        metrics = fit(cfg, run_dir, choices)
        rows.append({**r, **metrics, "run_dir": str(run_dir)})
        write_tables(rows, grid_dir, list(grid.settings))
    log.info("transfer grid results (%s):\n%s", grid_dir / "results.md",
             (grid_dir / "results.md").read_text())
    return rows


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="transfer_grid")
def main(grid: DictConfig) -> None:
    run_grid(grid, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
