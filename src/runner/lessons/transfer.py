"""Lessons on transfer learning: when pretrained weights help, and the checks that keep the comparison fair."""

import logging
import math

from omegaconf import OmegaConf

from runner.commands.transfer_grid import plan
from runner.config import CONFIG_DIR
from runner.data import checkpoint
from runner.engine.hooks import Component
from runner.lessons.lab import Lab, bar_figure, save_figure
from runner.lessons.regularization import logged_scalars
from runner.lessons.verdict import Result, Stat, accuracy_noise, all_of, greater, holds

# The keys of configs/transfer_grid.yaml a lesson sets (the rest: that file's defaults).
GRID_KEYS = ("pretrain_classes", "other_classes", "little_per_class", "much_per_class", "pretrain", "pretrain_epochs",
             "epochs", "little_epochs", "settings")
INITIAL_LOSS_WARNING = "the initial loss"


class HeadCosine(Component):
    """A component that, before the first step, measures the cosine between the run's output layer and `trained`
    (the pretraining run's trained output layer): about 0 for a freshly drawn head, large when the "new" head is a
    copy of what the pretraining started from."""

    def __init__(self, trained):
        self.trained, self.value = trained, None

    def start(self, run) -> None:
        from torch.nn import functional as F

        # torch only when the lesson runs: the lessons list and check torch-free
        from runner.nets.transfer import output_layer

        w = run.model.get_submodule(output_layer(run.model)).weight.detach().float().flatten().cpu()
        t = self.trained.float().flatten()
        self.value = F.cosine_similarity(w, t, dim=0).item() if w.shape == t.shape else math.nan


class _Warnings(logging.Handler):
    """Counts the runner's log warnings that contain `text`."""

    def __init__(self, text: str):
        super().__init__(logging.WARNING)
        self.text, self.count = text, 0

    def emit(self, record) -> None:
        if self.text in record.getMessage():
            self.count += 1


def _trained_head(pretrain_dir):
    """The pretraining run's trained output layer weights (runner's models: `head`, torchvision's: `fc`)."""
    state = checkpoint.load(pretrain_dir / "checkpoints/last.pt", needs=("model",))["model"]
    return next(state[k] for k in ("head.weight", "fc.weight", next(reversed(state))) if k in state)


def transfer_grid(lesson, lab: Lab) -> Result:
    grid = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "transfer_grid.yaml"), {k: lesson[k] for k in GRID_KEYS},
                           {"overrides": []})
    classes = len(grid.pretrain_classes)
    cells, warnings = _grid_cells(lesson, lab, grid)
    settings = list(grid.settings)
    rows = []
    for amount in ("little", "much"):
        for similarity in ("similar", "different"):
            row = {"data": f"{amount} ({grid[f'{amount}_per_class']}/class)", "task": similarity}
            for s in settings:
                row[s] = Stat([m["test_acc"] for m in cells[(amount, similarity, s)]])
            rows.append(row)
    transferred = [m for (_, _, s), ms in cells.items() if s != "scratch" for m in ms]
    losses = Stat([m["initial_loss"] for m in transferred])
    cosines = Stat([m["head_cosine"] for m in transferred])
    expected = math.log(classes)
    tolerance = float(lesson.initial_loss_tolerance)
    worst = max(abs(v - expected) for v in losses.values)
    best = next(s for s in settings if s != "scratch")
    little = {s: Stat([m["test_acc"] for m in cells[("little", "similar", s)]]) for s in settings}
    test_n = cells[("little", "similar", "scratch")][0]["at_end"]
    floor = accuracy_noise(little["scratch"].mean, test_n)
    verdict = all_of(
        holds(worst <= tolerance * expected and warnings == 0,
              f"every transfer run starts at a loss near ln {classes} = {expected:.3f} ({losses.text()}, at most "
              f"{worst:.3f} away; its new head's cosine with the pretrained head {cosines.text()}) and no "
              "initial-loss warning fired",
              f"transfer runs start at a loss of {losses.text()} against ln {classes} = {expected:.3f} (up to "
              f"{worst:.3f} away, tolerance {tolerance:g} x ln {classes}); {warnings} initial-loss warnings; head "
              f"cosine {cosines.text()}"),
        greater(little[best], little["scratch"], best, "scratch", "test acc with little data on the similar task",
                floor=floor))
    rows.append({"data": "step-0 loss of the transfer runs", "task": f"ln {classes} = {expected:.3f}",
                 **{s: Stat([m["initial_loss"] for (_, _, t), ms in cells.items() if t == s for m in ms])
                    for s in settings}})
    figure = _grid_figure(lab.figure_path(), rows[:4], settings)
    notes = ["each seed pretrains once (seed s) and runs every cell with seed s + 1 (runner.transfer_grid): a transfer "
             "run with the pretraining seed would start from the pretraining run's initial head, already aligned "
             "with the trained one (a step-0 loss of 1.22 instead of ln 5 = 1.61 on the similar task)",
             "step-0 loss: diag/initial_loss of each run (diagnostics at step 0); head cosine: the new output "
             "layer against the pretrained one, before the first step",
             f"test accuracy noise on {test_n} test images per cell: +-{floor:.3f} (binomial), the "
             "floor of the spread; cells other than little/similar are reported, not judged"]
    return Result(["data", "task", *settings], rows, verdict, notes, figure)


def _grid_cells(lesson, lab: Lab, grid) -> tuple[dict[tuple[str, str, str], list[dict]], int]:
    """Every cell's runs of the grid (amount, similarity, setting) over the lesson's seeds, each seed pretraining
    once; and how many initial-loss warnings the runs logged."""
    watch = _Warnings(INITIAL_LOSS_WARNING)
    logging.getLogger("runner").addHandler(watch)
    cells: dict[tuple[str, str, str], list[dict]] = {}
    try:
        for seed in lesson.seeds:
            grid.seed = seed
            pretrain_dir = lab.out / f"pretrain_seed{seed}"
            for r in plan(grid, pretrain_dir):
                head = [] if r["setting"] in ("pretrain", "scratch") else [HeadCosine(_trained_head(pretrain_dir))]
                m = lab.run(None, seed, extra=r["overrides"], name=r["name"], components=head,
                            at_end=lambda run: len(run.splits.test_y))
                m["initial_loss"] = _initial_loss(m["run_dir"])
                m["head_cosine"] = head[0].value if head else math.nan
                cells.setdefault((r["amount"], r["similarity"], r["setting"]), []).append(m)
    finally:
        logging.getLogger("runner").removeHandler(watch)
    cells.pop(("", "", "pretrain"), None)
    return cells, watch.count


def _initial_loss(run_dir) -> float:
    values = logged_scalars(run_dir, "diag/initial_loss").get("diag/initial_loss", [])
    return values[0] if values else math.nan


def _grid_figure(path, rows: list[dict], settings: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    width = 0.8 / len(settings)
    for j, s in enumerate(settings):
        for i, row in enumerate(rows):
            st, x = row[s], i + (j - (len(settings) - 1) / 2) * width
            ax.bar(x, st.mean, width, yerr=st.std if st.n > 1 else None, capsize=3, color=f"C{j}", alpha=0.75,
                   label=s if i == 0 else None)
            ax.plot([x] * st.n, st.values, "k.", markersize=4)
    ax.set_xticks(range(len(rows)), [f"{r['data']}\n{r['task']}" for r in rows], fontsize=8)
    ax.set_ylabel("test accuracy")
    n = max(row[s].n for row in rows for s in settings)
    ax.set_title(f"the transfer grid (mean over {n} seeds, error bar: 1 std, dots: each seed)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def unsupervised_pretraining(lesson, lab: Lab) -> Result:
    """Per seed: an autoencoder on the first half of the training images (no labels), then with per_class labelled
    images of the second half, from scratch and fine-tuned from the autoencoder's encoder."""
    accs = {"scratch": [], "pretrained": []}
    for seed in lesson.seeds:
        pre = lab.run(None, seed, extra=["objective=autoencoder", "data.train_half=first",
                                         f"trainer.epochs={lesson.pretrain_epochs}"], name="autoencoder")
        few = ["data.train_half=second", f"data.per_class={lesson.per_class}", f"trainer.epochs={lesson.epochs}",
               f"seed={seed + 1}"]  # not the pretraining seed: the new head starts fresh (see runner.transfer_grid)
        for arm, extra in (("scratch", []), ("pretrained", [f"model.pretrained={pre['run_dir']}",
                                                           f"transfer={lesson.transfer}"])):
            m = lab.run(None, seed, extra=[*few, *extra], name=arm, at_end=lambda run: len(run.splits.test_y))
            accs[arm].append(m)
    scratch, pretrained = (Stat([m["test_acc"] for m in accs[a]]) for a in ("scratch", "pretrained"))
    test_n = accs["scratch"][0]["at_end"]
    floor = accuracy_noise(scratch.mean, test_n)
    verdict = greater(pretrained, scratch, f"autoencoder-pretrained ({lesson.transfer})", "from scratch",
                      f"test acc with {lesson.per_class} labelled images per class", floor=floor)
    rows = [{"start": "from scratch", "labels per class": lesson.per_class, "test acc": scratch},
            {"start": f"autoencoder's encoder, transfer={lesson.transfer}", "labels per class": lesson.per_class,
             "test acc": pretrained}]

    figure = bar_figure(lab.figure_path(), {"scratch": scratch, "autoencoder": pretrained}, "test accuracy",
                        f"{lesson.per_class} labels per class: from scratch vs unsupervised pretraining")
    notes = [f"the autoencoder trains {lesson.pretrain_epochs} epochs on the first half of the training images "
             "without their labels (objective=autoencoder, reconstruction MSE); the labelled runs see "
             f"{lesson.per_class} images per class of the other half, for {lesson.epochs} epochs",
             f"test accuracy noise on {test_n} images: +-{floor:.3f} (binomial), the floor of the spread"]
    if not verdict.reproduced:
        notes.append(f"not reproduced at this size: an autoencoder of {lesson.pretrain_epochs} epochs learns to "
                     "reconstruct pixels, which need not separate the classes"
                     + (", and transfer=finetune trains the reused layers at transfer.lr_mult of the lr, so the "
                        "few-label run cannot move far from them" if lesson.transfer == "finetune" else "")
                     + "; the lecture's gains come from long unsupervised training on much more unlabelled data "
                     "than labelled (--full, or a larger pretrain_epochs)")
    return Result(["start", "labels per class", "test acc"], rows, verdict, notes, figure)
