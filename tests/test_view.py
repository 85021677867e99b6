"""What a person sees: the progress display (a bar on a terminal, timed lines elsewhere), the start-up phases, the
TensorBoard layout (Custom Scalars, HPARAMS column order, labelled image panels), `--help`, the sweep plots'
colour keys and the data cache's log line."""

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

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


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for `text`: a carriage return goes back to the line's start, what follows
    overwrites it."""
    lines = []
    for raw in text.split("\n"):
        row: list[str] = []
        for part in raw.split("\r"):
            row[:len(part)] = part
        if "".join(row).strip():
            lines.append("".join(row).rstrip())
    return lines


def test_the_bar_is_cleared_when_the_run_ends(monkeypatch):
    """On main the bar's last state, `testing (400 images) 100%|...| 4/4 steps`, stayed on the terminal below the
    test results, as if a line of them."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    progress = tracking.Progress("bar", steps_per_epoch=4, epochs=1)
    progress.start_epoch(0, 0)
    progress.end_epoch(step=4, images=400, loss=1.0, acc=0.5)
    progress.phase("testing (400 images)")
    assert "testing (400 images)" in _screen(out.getvalue())[-1]  # shown while the test runs
    progress.close()
    assert not any("testing" in line or "steps" in line for line in _screen(out.getvalue()))


def test_a_new_epoch_does_not_show_the_last_epochs_figures(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    progress = tracking.Progress("bar", steps_per_epoch=4, epochs=2)
    progress.start_epoch(0, 0)
    progress.end_epoch(step=4, images=400, loss=1.2345, acc=0.5)
    assert "loss 1.2345" in _screen(out.getvalue())[-1]
    progress.start_epoch(1, 4)
    assert "epoch 2/2" in _screen(out.getvalue())[-1] and "loss" not in _screen(out.getvalue())[-1]
    progress.close()


def _read_all(fd: int) -> str:
    """Everything written to the pty so far: one read may return only the first of several writes."""
    import os
    import select

    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode()


@pytest.mark.parametrize("rows", [24, 0])  # `script` reports 0 x 0: tqdm also hid a bar "below" a 0-line screen
def test_a_terminal_of_zero_columns_still_shows_the_bar(monkeypatch, rows):
    """Some containers and `script` report a terminal 0 columns wide; tqdm then drew nothing at all."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, 0, 0, 0))  # rows, columns (0), pixels
    stream = os.fdopen(slave, "w")
    try:
        assert os.get_terminal_size(stream.fileno()).columns == 0
        monkeypatch.setattr(sys, "stderr", stream)
        progress = tracking.Progress("bar", steps_per_epoch=4, epochs=1)
        progress.start_epoch(0, 0)
        progress.show(step=2, step_in_epoch=2, images=200, loss=1.0, acc=0.5)
        stream.flush()
        shown = _screen(_read_all(master))
        progress.close()
    finally:
        stream.close()
        os.close(master)
    assert shown and "epoch 1/1" in shown[-1] and "2/4 steps" in shown[-1] and "loss 1.0000" in shown[-1]
    assert len(shown[-1]) <= tracking.FALLBACK_COLUMNS


def test_the_screenshot_script_names_the_package_it_lacks_in_one_line(tmp_path):
    """docs/screenshots.py (make screenshots) needs the system's Chromium: without it, one line and exit 2, before
    any run is trained."""
    script = Path(__file__).resolve().parents[1] / "docs" / "screenshots.py"
    proc = subprocess.run([sys.executable, str(script), "--chromium", str(tmp_path / "chrome"), "--out",
                           str(tmp_path / "images")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: no Chromium at {tmp_path / 'chrome'}") and "apt-get install chromium" in proc.stderr
    assert list(tmp_path.iterdir()) == []


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
    assert {"inputs/augmentation", "inputs/preprocess"} <= set(events.Tags()["images"])
    gallery = events.Images("inputs/augmentation")[0]
    assert gallery.width > 600  # a figure with its row labels, not the bare 16-image grid (546 px)


def test_running_figures_are_the_sums_so_far():
    sums = train._Sums(torch.device("cpu"))
    sums.add(torch.tensor(2.0), torch.tensor(3), 4)
    sums.read(type("World", (), {"size": 1})(), accuracy=True)  # a log window ends
    sums.add(torch.tensor(1.0), torch.tensor(1), 4)
    loss, acc = sums.running(accuracy=True)
    assert loss == pytest.approx((2.0 * 4 + 1.0 * 4) / 8) and acc == pytest.approx(4 / 8)


def test_a_log_window_gives_every_steps_values_and_their_mean():
    """Each step's loss, accuracy and throughput go to TensorBoard (a short run's charts are lines, not two dots
    that TensorBoard's outlier clipping leaves off its scale); the hooks get the window's mean, weighted by images."""
    sums = train._Sums(torch.device("cpu"))
    for loss, correct, n in [(2.0, 1, 4), (1.0, 3, 4), (0.5, 2, 2)]:
        sums.add(torch.tensor(loss), torch.tensor(correct), n)
    window, steps = sums.read(type("World", (), {"size": 1})(), accuracy=True)
    assert steps["train/loss"] == pytest.approx([2.0, 1.0, 0.5])
    assert steps["train/acc"] == pytest.approx([1 / 4, 3 / 4, 2 / 2])
    assert len(steps["perf/img_per_s"]) == 3 and all(v > 0 for v in steps["perf/img_per_s"])
    assert window == pytest.approx({"loss": (2.0 * 4 + 1.0 * 4 + 0.5 * 2) / 10, "acc": 6 / 10})
    assert sums.epoch(accuracy=True) == pytest.approx((window["loss"], window["acc"]))


# ---------------------------------------------------------------------------------------------------------------
# TensorBoard

def test_every_custom_scalars_chart_matches_declared_tags():
    declared = ["train/loss", "val/loss", "val/loss_ema", "train/acc", "val/acc", "lr/decay", "perf/img_per_s",
                "diag/act_std/features.0.act", "diag/dead_frac/features.0.act", "diag/grad_norm/head",
                "diag/update_ratio/head", "diag/loss_batch_stats", "diag/loss_running_stats", "train/grad_norm"]
    for tag in declared:
        records.check_tag(tag)  # raises for an undeclared tag
    written = {records.where(tag) for tag in declared}  # (run, tag) as TensorBoard shows them
    for category in tracking.LAYOUT.values():
        for title, (kind, patterns) in category.items():
            assert kind == "Multiline"
            assert all(any(re.search(p, tag) for _, tag in written) for p in patterns), title
    curves = tracking.LAYOUT["learning curves"]
    loss = next(patterns for title, (_, patterns) in curves.items() if title.startswith("loss"))
    # one chart, two runs: train and validation write the same tag into runs of their own
    shown = {run for run, tag in written if any(re.search(p, tag) for p in loss)}
    assert shown == {"train", "validation", "validation_ema"}


def test_a_windows_steps_are_written_one_step_at_a_time_then_all_at_close(tmp_path):
    """The values a log window read are written between the next training steps (while the device works), one
    step's at a time; closing the tracker writes what is left."""
    tracker = tracking.Tracker(tmp_path)
    tracker.series({"train/loss": [3.0, 2.0, 1.0], "perf/img_per_s": [10.0, 20.0, 30.0]}, first_step=5)
    tracker.drain()
    tracker.runs["train"].flush()
    assert records.read_scalars(tmp_path, "train/loss") == [(5, 3.0)]
    tracker.close()
    assert records.read_scalars(tmp_path, "train/loss") == [(5, 3.0), (6, 2.0), (7, 1.0)]
    assert [step for step, _ in records.read_scalars(tmp_path, "perf/img_per_s")] == [5, 6, 7]
    assert (tmp_path / "train").is_dir() and not (tmp_path / "validation").exists()  # a run only where written


def test_the_diagnostics_category_is_folded_and_the_curves_open(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2

    tracker = tracking.Tracker(tmp_path)
    tracker.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    content = events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    layout = layout_pb2.Layout.FromString(content)
    assert [(c.title, c.closed) for c in layout.category] == [
        ("learning curves", False), ("diagnostics (diagnostics.every_steps)", True)]


def tensorboard_order(a: str, b: str) -> int:
    """TensorBoard's comparison of two tag names (compareTagNames of its web app, which orders the tag groups of Time
    Series and Scalars): digits and '/' before any other character, runs of digits by their value."""
    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if a[i].isdigit() and b[j].isdigit():
            ni, nj = i, j
            while ni < len(a) and a[ni].isdigit():
                ni += 1
            while nj < len(b) and b[nj].isdigit():
                nj += 1
            if int(a[i:ni]) != int(b[j:nj]):
                return -1 if int(a[i:ni]) < int(b[j:nj]) else 1
            i, j = ni, nj
            continue
        early_a, early_b = a[i] == "/" or a[i].isdigit(), b[j] == "/" or b[j].isdigit()
        if early_a != early_b:
            return -1 if early_a else 1
        if a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def test_tensorboard_order_is_its_web_apps():
    assert tensorboard_order("curves", "diag") < 0 and tensorboard_order("lr", "curves") > 0
    assert tensorboard_order("a2", "a10") < 0  # runs of digits by value
    assert tensorboard_order("a/b", "a_b") < 0 and tensorboard_order("a1", "ab") < 0  # '/' and digits first
    assert tensorboard_order("ab", "ab") == 0 and tensorboard_order("a", "ab") < 0


def test_the_curves_group_sorts_before_every_other_tag_group():
    """Time Series and Scalars order their tag groups (a tag's part before its first '/') by TensorBoard's
    comparison and open the first ones: the curves must come first, whatever a run writes."""
    groups = {records.where(tag)[1].split("/", 1)[0] for tag in records.TAGS}
    assert "curves" in groups and "diag" in groups
    assert all(tensorboard_order("curves", g) < 0 for g in groups - {"curves"}), sorted(groups)


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

    from runner.commands import report

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
