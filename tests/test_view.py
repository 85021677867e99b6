"""What a person sees: the progress display (a bar on a terminal, timed lines elsewhere), the start-up phases, the
TensorBoard layout (Custom Scalars, HPARAMS column order, labelled image panels), `--help`, the sweep plots'
colour keys and the data cache's log line."""

import io
import logging
import re
import subprocess
import sys

import matplotlib
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import choices_of, compose_config
from runner.engine import records, tracking, train

matplotlib.use("Agg")


# ---------------------------------------------------------------------------------------------------------------
# Progress

@pytest.mark.parametrize(("setting", "every_s", "main", "tty", "mode"), [
    ("auto", 30, True, True, "bar"), ("auto", 30, True, False, "lines"), ("auto", 0, True, False, "off"),
    (True, 30, True, False, "bar"), (False, 30, True, True, "off"), ("auto", 30, False, True, "off"),
])
def test_progress_mode_follows_the_setting_the_terminal_and_the_rank(setting, every_s, main, tty, mode):
    assert tracking.progress_mode(setting, every_s, main, tty) == mode


def test_progress_every_s_is_validated():
    from runner.config import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.progress_every_s=-1 is invalid"):
        compose_config(["trainer.progress_every_s=-1"])


def test_the_bar_shows_the_epoch_figures_eta_and_phases(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    progress = tracking.Progress("bar", steps_per_epoch=4, epochs=2)
    progress.start_epoch(0, 0)
    assert not progress.due()  # throttled: nothing is read back before BAR_REFRESH_S
    progress.show(step=3, step_in_epoch=3, images=768, loss=1.2345, acc=0.5)
    progress.phase("validating (500 images)")
    progress.close()
    text = out.getvalue()
    assert "epoch 1/2" in text and "3/8 steps" in text and "loss 1.2345 acc 0.5000" in text and "img/s" in text
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", text)  # elapsed < remaining (the ETA)
    assert "epoch 1/2 validating (500 images)" in text


def test_a_run_off_a_terminal_prints_timed_lines_and_writes_the_layout_metrics_first_and_labelled_pictures(
        tmp_path, caplog):
    from tensorboard.plugins.hparams import metadata

    overrides = ["trainer.epochs=1", "model.widths=[4,8]", "trainer.progress=auto", "trainer.progress_every_s=1e-9",
                 "diagnostics.every_steps=0"]
    with caplog.at_level(logging.INFO, logger="runner"):
        metrics = train.fit(compose_config(overrides), tmp_path, choices_of(overrides))
    lines = [r.getMessage() for r in caplog.records]
    steps = [m for m in lines if m.startswith("epoch 1/1  step ")]
    # a line at every step but the last (the epoch line follows it): 1000 images / batch 100
    assert [int(re.match(r"epoch 1/1  step (\d+)/10", m)[1]) for m in steps] == list(range(1, 10))
    assert all(re.search(r"loss \d\.\d{4} acc \d\.\d{4} [\d,]+ img/s  elapsed \d\d:\d\d  ETA \d\d:\d\d", m)
               for m in steps)
    last = float(re.search(r"acc (\d\.\d{4})", steps[-1])[1])  # the epoch's running accuracy, 9 of 10 steps
    assert abs(last - metrics["history"][0]["train_acc"]) < 0.2
    assert any(m.startswith("loading data=synthetic") for m in lines)
    assert any(m.startswith("testing (400 images)") for m in lines)
    # the first and last lines name the run directory and how to see it
    assert str(tmp_path) in lines[0] and "tensorboard --logdir" in lines[0]
    assert str(tmp_path) in lines[-1] and "tensorboard --logdir" in lines[-1]

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "custom_scalars__config__" in events.Tags()["tensors"]
    experiment = metadata.parse_experiment_plugin_data(
        events.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos][:2] == ["val/best_acc", "test/acc"]
    assert {"augmentation/original_then_augmented", "preprocess/original_then_input"} <= set(events.Tags()["images"])
    gallery = events.Images("augmentation/original_then_augmented")[0]
    assert gallery.width > 600  # a figure with its row labels, not the bare 16-image grid (546 px)


def test_running_figures_are_the_sums_so_far():
    sums = train._Sums(torch.device("cpu"))
    sums.add(torch.tensor(2.0), torch.tensor(3), 4)
    sums.read(type("World", (), {"size": 1})(), accuracy=True)  # a log window ends
    sums.add(torch.tensor(1.0), torch.tensor(1), 4)
    loss, acc = sums.running(accuracy=True)
    assert loss == pytest.approx((2.0 * 4 + 1.0 * 4) / 8) and acc == pytest.approx(4 / 8)


# ---------------------------------------------------------------------------------------------------------------
# TensorBoard

def test_every_custom_scalars_chart_matches_declared_tags():
    written = ["train/loss", "val/loss", "val/loss_ema", "train/acc", "val/acc", "lr/decay", "perf/img_per_s",
               "diag/act_std/features.0.act", "diag/dead_frac/features.0.act", "diag/grad_norm/head",
               "diag/update_ratio/head", "diag/loss_batch_stats", "diag/loss_running_stats", "train/grad_norm"]
    for tag in written:
        records.check_tag(tag)  # raises for an undeclared tag
    for category in tracking.LAYOUT.values():
        for title, (kind, patterns) in category.items():
            assert kind == "Multiline"
            assert all(any(re.search(p, tag) for tag in written) for p in patterns), title
    curves = tracking.LAYOUT["learning curves"]
    loss = next(patterns for title, (_, patterns) in curves.items() if title.startswith("loss"))
    assert any(re.search(p, "train/loss") for p in loss) and any(re.search(p, "val/loss") for p in loss)


def test_overridden_keys_come_first_in_hparams(cfg):
    keys = tracking.overridden_keys(["optimizer=adam", "+seed=3", "optimizer.lr=0.1", "~prune", "hydra.x=1"])
    assert keys == ["optimizer", "seed", "optimizer.lr", "hydra.x"]
    flat = tracking.flat_hparams(cfg, {"optimizer": "momentum", "activation": "relu"}, first=keys)
    assert list(flat)[:3] == ["optimizer", "seed", "optimizer.lr"]
    assert flat["optimizer.lr"] == cfg.optimizer.lr and "activation" in flat


def test_hparams_columns_put_what_differs_first_as_tensorboard_orders_them(tmp_path):
    from tensorboard.plugins.hparams import metadata

    from runner.sweeps.study import write_experiment

    jobs = []
    for i, (opt, lr) in enumerate([("sgd", 0.1), ("adam", 0.001)]):
        tracker = tracking.Tracker(tmp_path / str(i))
        tracker.hparams({"activation": "relu", "augmentation.padding": 4, "optimizer": opt, "optimizer.lr": lr},
                        {"test/acc": 0.5, "val/best_acc": 0.6}, 10, experiment=False)
        tracker.close()
        jobs.append(tmp_path / str(i))
    events = EventAccumulator(str(write_experiment(tmp_path, jobs)))
    events.Reload()
    experiment = metadata.parse_experiment_plugin_data(events.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG])
    infos = [(h.name, h.differs) for h in experiment.hparam_infos]
    assert infos == [("optimizer", True), ("optimizer.lr", True), ("activation", False),
                     ("augmentation.padding", False)]
    assert [m.name.tag for m in experiment.metric_infos] == ["val/best_acc", "test/acc"]
    # a single run: the keys its command line set are flagged as differing (TensorBoard lists those first)
    exp, _, _ = tracking.hparams_summary({"activation": "relu", "optimizer.lr": 0.1}, {"test/acc": 0.5})
    tracking._mark_differing(exp, {"optimizer.lr"})
    single = metadata.parse_experiment_plugin_data(exp.value[0].metadata.plugin_data.content)
    assert [(h.name, h.differs) for h in single.hparam_infos] == [("activation", False), ("optimizer.lr", True)]


def test_labelled_grid_names_each_row():
    grid = torch.zeros(3, 70, 546, dtype=torch.uint8)
    figure = tracking.labelled_grid(grid, ["original", "epoch 1"], "augmentation=flip")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["original", "epoch 1"]
    assert ax.get_title(loc="left") == "augmentation=flip"


# ---------------------------------------------------------------------------------------------------------------
# --help, the report's colours, the cache

def test_help_lists_each_option_with_its_description_and_the_plus_groups_without_torch(tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    proc = subprocess.run([sys.executable, "-m", "runner", "--help"], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(fake.parent), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "+experiment=fast" in text and "-m +sweep=" in text
    assert re.search(r"^ {3}adam +Adam \(Kingma & Ba 2015\)", text, re.M)  # the first sentence of adam.yaml
    assert re.search(r"^ {2}\*nesterov ", text, re.M)  # the default marked
    assert "sweep (-m +sweep=<option>" in text and "experiment (+experiment=<option>)" in text


def test_report_colours_numbers_on_a_scale_and_names_on_a_legend():
    import matplotlib.pyplot as plt

    from runner import report

    rows = [{"lr": 1e-3, "opt": "sgd"}, {"lr": 1e-1, "opt": "adam"}, {"lr": 1e-2, "opt": "sgd"}]
    fig, ax = plt.subplots()
    color_of, handles = report._value_colors(rows, "lr", {"log": True}, fig, ax)
    assert handles == [] and len(fig.axes) == 2  # a colorbar
    assert "log scale" in fig.axes[1].get_ylabel()
    assert color_of(rows[0]) != color_of(rows[1])
    color_of, handles = report._value_colors(rows, "opt", {}, fig, ax)
    assert [h.get_label() for h in handles] == ["opt=sgd", "opt=adam"]
    assert color_of(rows[0]) == color_of(rows[2]) != color_of(rows[1])
    plt.close(fig)


def test_the_first_decode_says_where_the_cache_is_and_its_size(tmp_path, caplog):
    from runner.data import loading
    from test_data import write_cifar

    write_cifar(tmp_path / "root")
    with caplog.at_level(logging.INFO, logger="runner"):
        loading.load_cifar10(tmp_path / "root", tmp_path / "cache", download=False)
        loading.load_cifar10(tmp_path / "root", tmp_path / "cache", download=False)
    said = [r.getMessage() for r in caplog.records if "decoded CIFAR-10" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "cache") in said[0] and re.search(r"\(\d+ MB\)", said[0])
    assert "data.cache_dir" in said[0]
