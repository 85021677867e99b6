"""`make bench` / `python -m runner.bench`: runner's speed, side by side with the usual alternative, in one run.

(a) input pipeline: runner's device-resident uint8 batches (crop + flip + normalize per batch) against torchvision's
    CIFAR10 dataset with RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize through
    DataLoader(num_workers=2);
(b) engine overhead: runner's train_one_epoch (TensorBoard logging on) against a bare hand-written loop, same model,
    batch size and device-resident data; alternated and repeated, the median of each reported;
(c) start-up: seconds from process start to the first training step, and for `python -m runner --cfg job`;
(d) speed options: img/s of the default cnn with each of trainer.channels_last / precision / compile switched on;
(e) data parallel: img/s of `torchrun --nproc_per_node=2` against one process, same global batch;
(f) the fast preset against the default cnn at the same wall-clock budget: test accuracy after each epoch;
(g) inference latency per activation: one forward pass of the default cnn (or --latency-model) in eval mode, fp32,
    with its batch norms as they are and folded into the conv before them, at batch 1 and a large batch (median and
    IQR over --repeats x 10 timed calls), side by side;
(h) the default experiment as shipped (its validation split held out) against ../shared/bench/baseline_cnn.py (the
    same cnn by hand, on every training image), same epochs and seeds;
(i) the fast preset against ../shared/bench/airbench_ref.py (airbench94's recipe), same images and epochs, plain and
    TTA accuracy (--bf16: both in bf16 autocast);
    (h) and (i): --train-size, --epochs, --seeds (quick by default; --full: all 50,000 images, 10 epochs, 2 seeds);
    they need the CIFAR-10 folder (--data-root) and the reference scripts (RUNNER_BENCH_REFERENCE, default
    ../shared/bench);
(j) a sweep's fixed cost per trial (start-up, data, test pass, the sweep's own work) against its 1-epoch trial on
    5,000 images, with the test pass in each trial and left to the end of the sweep;
(k) the option grid at the defaults (runner.grid): every combination of model x activation x init x norm x
    regularization of the grid trained with no optimizer, lr or batch size given; each must complete and clear
    twice chance (--grid-epochs; on the synthetic task, or on CIFAR-10 with --grid-cifar).

Data: the CIFAR-10 copy under data.root / RUNNER_DATA_DIR when there is one, else synthetic data of the same shape.
Timings on a shared machine are noisy: read the ratios, which are measured side by side.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from runner.commands import grid
from runner.config import CONFIG_DIR, register_resolvers, validate
from runner.config.keys import option_names
from runner.config.schema import CIFAR10_TRAIN_IMAGES
from runner.data import loading as data
from runner.engine import train
from runner.engine.build import (
    build_augmentation,
    build_model,
    build_optimizer,
    build_preprocess,
    build_schedule,
)
from runner.engine.inference import latency_table
from runner.engine.run import Run
from runner.nets.fold import fold_batch_norm


def _config(overrides):
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate(cfg)  # completes it with the schema's defaults, as a run's config is
    return cfg


def _arrays(root: str | None):
    if root and (Path(root) / data.CIFAR10_FOLDER).is_dir():
        return data.load_cifar10(Path(root), data.default_cache_dir(), download=False), f"CIFAR-10 at {root}"
    arrays = data.make_synthetic(CIFAR10_TRAIN_IMAGES, 10_000, 40.0, seed=0)
    return arrays, "synthetic data (no CIFAR-10 copy found)"


def runner_batches(x, y, augmentation, preprocess, batch_size: int, generator, epoch: int = 0):
    """runner's input pipeline as its training loop runs it, one epoch: the augmentation's view of the split for
    `epoch`, shuffled into batches, each augmented and preprocessed on the device. Yields (inputs, labels)."""
    for xb, yb in data.train_batches(augmentation.epoch_view(x, epoch), y, batch_size, generator):
        yield preprocess(augmentation(xb, generator)), yb


def bench_input_pipeline(arrays, device, images: int, batch_size: int = 256) -> dict:
    """Images per second through each pipeline, until `images` training images have been produced."""
    import torchvision
    import torchvision.transforms as T

    cfg = _config(["device=cpu"])
    x = torch.from_numpy(arrays["train_x"]).to(device)
    y = torch.from_numpy(arrays["train_y"]).to(device)
    norm = build_preprocess(cfg, x).to(device)  # the default, per-channel standardization
    augmentation = build_augmentation(cfg)
    gen = torch.Generator(device=device).manual_seed(0)

    def runner_pipeline():
        done, epoch, start = 0, 0, time.perf_counter()
        while done < images:
            for out, _ in runner_batches(x, y, augmentation, norm, batch_size, gen, epoch):
                done += len(out)
                if done >= images:
                    break
            epoch += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return done / (time.perf_counter() - start)

    class Cifar10(torchvision.datasets.CIFAR10):
        """torchvision's CIFAR10 over the same arrays (its MD5 check rejects copies that are not byte-identical
        to the official archive, so the arrays are handed over directly; the per-image path is unchanged)."""

        def __init__(self, transform):
            self.data = arrays["train_x"].transpose(0, 2, 3, 1)  # (N, 32, 32, 3), as torchvision keeps it
            self.targets = arrays["train_y"].tolist()
            self.transform, self.target_transform = transform, None

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    loader = torch.utils.data.DataLoader(Cifar10(transform), batch_size=batch_size, shuffle=True, num_workers=2,
                                         drop_last=True, persistent_workers=False)

    def torchvision_pipeline():
        done, start = 0, time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            done += len(xb)
            if done >= images // 4:  # 4x fewer images: this path is the slow one
                break
        return done / (time.perf_counter() - start)

    runner_pipeline()  # warm-up
    ours, theirs = runner_pipeline(), torchvision_pipeline()
    return {"runner_img_per_s": ours, "torchvision_img_per_s": theirs, "speedup": ours / theirs}


def bench_engine(data_args: list[str], device, train_size: int, repeats: int, overrides=()) -> dict:
    """One epoch over train_size images: runner's train_one_epoch (a real Run: logging, components) against a bare
    loop, same model, optimizer, schedule and data (the run's own splits, loaded as its config says)."""
    cfg = _config([*data_args, f"device={device}", "trainer.progress=false", "data.val_size=0",
                   f"data.train_size={train_size}", f"trainer.epochs={repeats + 1}", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(cfg, Path(tmp), {"model": "bench"})
        run.open_tracker()
        bare = _bare_state(cfg, run.splits, device, run.steps_per_epoch * (repeats + 1), run.steps_per_epoch)
        augmentation = build_augmentation(cfg)  # the bare loop's own, as the run has its own
        _runner_epoch(run)  # warm-up both
        _bare_epoch(bare, run.splits, augmentation, cfg.trainer.batch_size, device)
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(_runner_epoch(run))
            theirs.append(_bare_epoch(bare, run.splits, augmentation, cfg.trainer.batch_size, device))
        run.tracker.close()
        run.release()
    o, b = statistics.median(ours), statistics.median(theirs)
    return {"runner_img_per_s": o, "bare_img_per_s": b, "overhead_pct": 100 * (b - o) / b,
            "model": cfg.model._target_, "batch_size": cfg.trainer.batch_size, "train_size": train_size}


def _runner_epoch(run) -> float:
    result, _ = train.train_one_epoch(run)
    return result.images / result.seconds


def _bare_state(cfg, splits, device, total_steps: int, steps_per_epoch: int) -> tuple:
    """The bare loop's model, preprocessing, optimizer and schedule, built from the same config as the run's."""
    torch.manual_seed(0)
    model = build_model(cfg, 10).to(device)
    opt = build_optimizer(cfg, model)
    return (model, build_preprocess(cfg, splits.train_x).to(device), opt,
            build_schedule(cfg, opt, total_steps, steps_per_epoch))


def _bare_epoch(state: tuple, splits, augmentation, batch_size: int, device) -> float:
    """One epoch of a hand-written loop (no logging, no components) over runner's batches; img/s."""
    model, pre, opt, sched = state
    gen = torch.Generator(device=device).manual_seed(0)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    n, start = 0, time.perf_counter()
    for xb, yb in runner_batches(splits.train_x, splits.train_y, augmentation, pre, batch_size, gen):
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        n += len(yb)
    loss.item()  # wait for the device
    return n / (time.perf_counter() - start)


def bench_startup(root: str | None, repeats: int) -> dict:
    """Wall seconds for `python -m runner --cfg job`, and from process start to the first training step."""
    cfg_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "runner", "--cfg", "job"], check=True, capture_output=True)
        cfg_times.append(time.perf_counter() - start)
    data_args = [f"data.root={root}"] if root and (Path(root) / data.CIFAR10_FOLDER).is_dir() else ["data=synthetic"]
    first_step = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            run_dir = Path(tmp) / str(i)
            start = time.time()
            subprocess.run([sys.executable, "-m", "runner", *data_args, "trainer.epochs=1", "data.train_size=512",
                            "trainer.progress=false", f"hydra.run.dir={run_dir}"], check=True, capture_output=True)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            first_step.append(metrics["first_step_at"] - start)
    return {"cfg_job_s": statistics.median(cfg_times), "first_step_s": statistics.median(first_step)}


def _run(args: list[str], run_dir: Path, launcher: list[str] | None = None) -> dict:
    """One runner run in a subprocess; its metrics.json."""
    cmd = [*(launcher or [sys.executable]), "-m", "runner", *args, "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((run_dir / "metrics.json").read_text())


def _img_per_s(metrics: dict) -> float:
    """Training img/s over the run's epochs after the first (which pays for warm-up and compilation)."""
    epochs = metrics["history"][1:] or metrics["history"]
    return sum(h["images"] for h in epochs) / sum(h["epoch_s"] for h in epochs)


def bench_speed_options(data_args: list[str], device, with_compile: bool) -> dict:
    """The default cnn for 2 short epochs with each speed option on, against all of them off."""
    base = [*data_args, f"device={device}", "trainer.epochs=2", "data.train_size=2048", "diagnostics.every_steps=0",
            "trainer.channels_last=false", "trainer.precision=fp32", "trainer.compile=false",
            "trainer.fused_optimizer=false"]
    options = {"all off (fp32)": [], "channels_last": ["trainer.channels_last=true"],
               "bf16 autocast": ["trainer.precision=bf16"], "fused optimizer": ["trainer.fused_optimizer=true"]}
    if with_compile:
        options["compile"] = ["trainer.compile=true"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(options.items()):
            try:
                out[name] = _img_per_s(_run([*base, *extra], Path(tmp) / str(i)))
            except RuntimeError as err:  # e.g. fused kernels that this torch offers on CUDA only
                out[name] = f"not available here ({str(err).strip().splitlines()[-1][:120]})"
    return out


def bench_data_parallel(data_args: list[str]) -> dict:
    """Two gloo processes (one thread each) against one process (two threads), same global batch, on the CPU."""
    args = [*data_args, "device=cpu", "trainer.epochs=2", "data.train_size=4096", "diagnostics.every_steps=0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    with tempfile.TemporaryDirectory() as tmp:
        one = _run(args, Path(tmp) / "one")
        two = _run(args, Path(tmp) / "two", launcher=torchrun)
    return {"one_process_img_per_s": _img_per_s(one), "two_processes_img_per_s": _img_per_s(two),
            "same_steps": one["steps"] == two["steps"], "test_acc": [one["test_acc"], two["test_acc"]]}


def bench_preset(data_args: list[str], device, train_size: int, epochs: int) -> list[dict]:
    """Test accuracy of +experiment=fast after 1..epochs epochs (a run per length: the schedule spans the run), and
    of the default cnn given the same wall-clock time as each."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in range(1, epochs + 1):
            # TTA off: six test-set passes of the airbench net would dominate a CPU run's wall time
            fast = _run([*data_args, f"device={device}", "+experiment=fast", f"trainer.epochs={e}",
                         f"data.train_size={train_size}", "trainer.batch_size=512", "evaluation.tta_flip=false",
                         "evaluation.tta_translate=0"], Path(tmp) / f"fast{e}")
            budget = fast["wall_time_s"]
            probe = _run([*data_args, f"device={device}", "trainer.epochs=1", f"data.train_size={train_size}"],
                         Path(tmp) / f"probe{e}")
            epoch_s = probe["history"][0]["epoch_s"] + 1e-9
            fixed_s = probe["wall_time_s"] - epoch_s  # data, model, test evaluation: paid once per run
            cnn_epochs = max(1, round((budget - fixed_s) / epoch_s))
            cnn = probe if cnn_epochs == 1 else _run(
                [*data_args, f"device={device}", f"trainer.epochs={cnn_epochs}", f"data.train_size={train_size}"],
                Path(tmp) / f"cnn{e}")
            rows.append({"fast_epochs": e, "fast_test_acc": fast["test_acc"], "wall_s": budget,
                         "cnn_epochs": cnn_epochs, "cnn_test_acc": cnn["test_acc"], "cnn_wall_s": cnn["wall_time_s"]})
    return rows


def bench_latency(device, model: str, batch_sizes: list[int], repeats: int) -> dict:
    """{activation: {unfolded|folded: {batch size: latency}}} of `model=` with each `activation=` option."""
    out = {}
    for activation in option_names("activation"):
        cfg = _config([f"model={model}", f"activation={activation}", "norm=batch", f"device={device}"])
        torch.manual_seed(0)
        net = build_model(cfg, 10).to(device).eval()
        folded, count = fold_batch_norm(net)
        images = torch.randn(max(batch_sizes), 3, 32, 32, device=device)
        out[activation] = {"batch_norms_folded": count,
                           **latency_table({"unfolded": net, "folded": folded}, images, batch_sizes, repeats)}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Against the reference scripts (../shared/bench), run as they are, on the same images, epochs and machine

# ../shared/bench beside the checkout (CONFIG_DIR is <checkout>/configs), or where RUNNER_BENCH_REFERENCE points
REFERENCE_DIR = Path(os.environ.get("RUNNER_BENCH_REFERENCE", CONFIG_DIR.parent.parent / "shared" / "bench"))


def _subset_root(root: Path, tmp: Path, name: str, positions, bytes_keys: bool = False, held_out: int = 0) -> Path:
    """A copy of the CIFAR-10 folder at `root` whose training image at file position positions[j] is runner's j-th
    training image (the train_size images after the first held_out = data.val_size of its seeded permutation), the
    other images after them: a script that takes the images at those positions trains on exactly runner's images.
    The test batch and
    meta file are links to the originals. bytes_keys: the batches' keys as bytes (airbench_ref.py unpickles with
    encoding="bytes"), else str (baseline_cnn.py, encoding="latin1")."""
    import pickle

    arrays = data.read_cifar10(root)
    n = len(arrays["train_y"])
    positions = positions(n) if callable(positions) else positions  # a function of the number of images
    mine = np.random.default_rng(0).permutation(n)  # runner's split with data.split_seed=0
    train = mine[held_out:held_out + len(positions)]  # runner's training images, in its order
    order = np.empty(n, dtype=np.int64)
    order[positions] = train
    rest = np.setdiff1d(np.arange(n), positions, assume_unique=True)
    order[rest] = np.setdiff1d(mine, train, assume_unique=True)
    folder = tmp / name / data.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    x, y = arrays["train_x"][order].reshape(n, -1), arrays["train_y"][order]
    for i, part in enumerate(np.array_split(np.arange(n), len(data.TRAIN_BATCHES))):
        with (folder / data.TRAIN_BATCHES[i]).open("wb") as f:  # the keys as the official files hold them
            keys = (b"data", b"labels") if bytes_keys else ("data", "labels")
            pickle.dump(dict(zip(keys, (x[part], y[part].tolist()), strict=True)), f, protocol=4)
    for other in (data.TEST_BATCH, "batches.meta"):
        (folder / other).symlink_to((root / data.CIFAR10_FOLDER / other).resolve())
    return folder.parent


def _script(args: list[str], seed: int | None = None) -> tuple[str, float]:
    """Run a reference script with this Python; its stdout and wall seconds. seed: for a script that fixes its own
    seed (baseline_cnn.py calls torch.manual_seed(0) and np.random.seed(0)), run it with those two calls seeded by
    `seed` instead, the script's file untouched."""
    start = time.perf_counter()
    command = [sys.executable, *args]
    if seed is not None:
        command = [sys.executable, "-c", _SEEDED, str(seed), *args]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - start


# python -c _SEEDED SEED SCRIPT ARGS...: SCRIPT as __main__ with its manual_seed / np.random.seed calls given SEED.
_SEEDED = """
import runpy, sys
import numpy, torch
seed, script = int(sys.argv[1]), sys.argv[2]
sys.argv = sys.argv[2:]
torch_seed, numpy_seed = torch.manual_seed, numpy.random.seed
torch.manual_seed = lambda _: torch_seed(seed)
numpy.random.seed = lambda _=None: numpy_seed(seed)
runpy.run_path(script, run_name="__main__")
"""


def _timed_run(args: list[str], run_dir: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    metrics = _run(args, run_dir)
    return metrics, time.perf_counter() - start


def bench_baseline(root: str, device, train_size: int, epochs: int, seeds: int) -> dict:
    """(h) The default experiment as a user runs it (its validation split held out) against
    ../shared/bench/baseline_cnn.py (the same cnn written by hand, no validation split), same epochs, seeds
    0..seeds-1 on both sides (the script's fixed seed replaced, see _script). At full size the script trains on all
    50,000 training images and runner on the 45,000 its default leaves after data.val_size; below it, both train on
    the same train_size images (runner's, given to the script as its first ones)."""
    full = train_size >= CIFAR10_TRAIN_IMAGES
    held_out = int(_config([]).data.val_size)
    n = CIFAR10_TRAIN_IMAGES if full else train_size
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script_root = Path(root) if full else _subset_root(Path(root), tmp, "first", np.arange(n), held_out=held_out)
        for seed in range(seeds):
            metrics, wall = _timed_run([f"data.root={root}", f"device={device}", f"seed={seed}",
                                        f"trainer.epochs={epochs}"] + ([] if full else [f"data.train_size={n}"]),
                                       tmp / f"runner{seed}")
            ours.append({"test_acc": metrics["test_acc"], "wall_s": wall, "train_s": metrics["wall_time_s"],
                         "images": metrics["images_seen"] // epochs, "best_val_acc": metrics["best_val_acc"]})
            out, wall = _script([str(REFERENCE_DIR / "baseline_cnn.py"), str(script_root), str(n), str(epochs)], seed)
            last = [line for line in out.splitlines() if line.startswith("epoch ")][-1]
            theirs.append({"test_acc": float(last.split("test acc ")[1].split()[0]), "wall_s": wall, "images": n})
    return {"train_size": n, "epochs": epochs, "runner": ours, "baseline": theirs, "device": str(device),
            "held_out": held_out}


def bench_airbench(root: str, device, train_size: int, epochs: int, seeds: int, bf16: bool = False) -> dict:
    """(i) +experiment=fast against ../shared/bench/airbench_ref.py (airbench94's recipe written independently):
    same images (the script's random subset, generator seed 1234, is given runner's images at its positions), same
    epochs, no validation hold-out; test accuracy plain and with TTA, wall seconds. bf16: both in bf16 autocast with
    channels_last (as on a GPU, where it is the default for both; on a CPU with native bf16 it is faster too)."""
    bf16 = bf16 or device.type == "cuda"
    n = min(train_size, CIFAR10_TRAIN_IMAGES)
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script_root = Path(root)
        if n < CIFAR10_TRAIN_IMAGES:
            def picked(total: int) -> np.ndarray:  # what airbench_ref.py takes of `total` training images
                return torch.randperm(total, generator=torch.Generator().manual_seed(1234))[:n].numpy()

            script_root = _subset_root(Path(root), tmp, "airbench", picked, bytes_keys=True)
        for seed in range(seeds):
            speed = ["trainer.precision=bf16", "trainer.channels_last=true"] if bf16 else []
            metrics, wall = _timed_run([f"data.root={root}", f"device={device}", f"seed={seed}", "+experiment=fast",
                                        f"trainer.epochs={epochs}", "data.val_size=0", f"data.train_size={n}", *speed],
                                       tmp / f"runner{seed}")
            ours.append({"test_acc": metrics["test_acc"], "tta_acc": metrics.get("test_acc_tta"), "wall_s": wall,
                         "train_s": sum(h["epoch_s"] for h in metrics["history"])})
            args = [str(REFERENCE_DIR / "airbench_ref.py"), "--data", str(script_root), "--train-size", str(n),
                    "--epochs", str(epochs), "--seed", str(seed), "--device", str(device)]
            out, wall = _script(args + (["--bf16"] if bf16 else []))
            ref = json.loads(out.strip().splitlines()[-1])
            theirs.append({"test_acc": ref["test_acc"], "tta_acc": ref["tta_acc"], "wall_s": wall,
                           "train_s": ref["train_s"]})
    return {"train_size": n, "epochs": epochs, "runner": ours, "airbench_ref": theirs, "device": str(device),
            "precision": "bf16" if bf16 else "fp32"}


def _mean_sd(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{spread}"


# ---------------------------------------------------------------------------------------------------------------
# A sweep's fixed cost per trial

def _trial_times(job_dir: Path) -> dict:
    """A trial's job start and end (time.time()), and the seconds of its real work: training and validation."""
    m = json.loads((job_dir / "metrics.json").read_text())
    started = m["first_step_at"] - m["startup_s"]
    ended = started + m["startup"]["setup_s"] + m["wall_time_s"]
    work = sum(h["epoch_s"] + h["val_s"] for h in m["history"])
    return {"started": started, "ended": ended, "work_s": work, "startup_s": m["startup_s"], **m["startup"]}


def bench_sweep_cost(data_args: list[str], device, train_size: int, trials: int) -> dict:
    """(j) What a sweep's trial pays besides training and validating: a grid of `trials` seeds, 1 epoch on
    train_size images each, the default cnn, Hydra's basic launcher (one process), measured twice side by side: each
    trial testing at its end (hydra.sweeper.test_trials=all) and the test left to the end of the sweep
    (test_trials=best, test_best=1). Fixed cost of a trial = its job's seconds minus its training and validation,
    plus the sweep's gap before the next trial (Hydra, Optuna, trials.csv); the first trial (imports) apart."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("all", "best"):
            sweep_dir = Path(tmp) / mode
            cmd = [sys.executable, "-m", "runner", "-m", *data_args, f"device={device}", "trainer.epochs=1",
                   f"data.train_size={train_size}", "trainer.progress=false", f"seed={','.join(map(str, range(trials)))}",
                   f"hydra.sweeper.test_trials={mode}", "hydra.sweeper.test_best=1", f"hydra.sweep.dir={sweep_dir}"]
            start = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            end = time.time()
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            times = sorted((_trial_times(d) for d in sweep_dir.iterdir() if (d / "metrics.json").is_file()),
                           key=lambda t: t["started"])
            gaps = [b["started"] - a["ended"] for a, b in zip(times, times[1:], strict=False)]
            later = times[1:] or times
            gap = statistics.fmean(gaps) if gaps else 0.0
            fixed = [t["ended"] - t["started"] - t["work_s"] + gap for t in later]
            trial = [t["ended"] - t["started"] + gap for t in later]
            out[mode] = {
                "trials": len(times), "fixed_s": statistics.fmean(fixed), "trial_s": statistics.fmean(trial),
                "ratio": statistics.fmean(fixed) / statistics.fmean(trial), "gap_s": gap,
                "startup_s": statistics.fmean(t["startup_s"] for t in later),
                "parts": {k: statistics.fmean(t[k] for t in later) for k in ("setup_s", "data_s", "build_s",
                                                                              "first_step_s")},
                "first_trial_startup_s": times[0]["startup_s"],
                "before_first_s": times[0]["started"] - start, "after_last_s": end - times[-1]["ended"],
                "sweep_s": end - start}
    return out


@dataclass
class Bench:
    """What every part of the bench is given: the command line, the device, and the data (`arrays` for (a); the
    data overrides of a run for the others)."""

    args: argparse.Namespace
    device: torch.device
    arrays: dict
    has_cifar: bool
    data_args: list[str]
    results: dict = field(default_factory=dict)


def _part_a(b: Bench) -> None:
    r = b.results["input_pipeline"] = bench_input_pipeline(b.arrays, b.device, b.args.pipeline_images)
    print(f"(a) input pipeline, crop+flip+normalize    runner {r['runner_img_per_s']:>10,.0f} img/s   "
          f"torchvision DataLoader(num_workers=2) {r['torchvision_img_per_s']:>8,.0f} img/s   "
          f"-> {r['speedup']:.1f}x (target >= 10x)")


def _part_b(b: Bench) -> None:
    data_args = [f"data.root={b.args.data_root}"] if b.has_cifar else [
        "data=synthetic", f"data.train_examples={b.args.engine_images}", "data.test_examples=10"]
    r = b.results["engine"] = bench_engine(data_args, b.device, b.args.engine_images, b.args.repeats)
    print(f"(b) engine, default cnn, batch {r['batch_size']}         runner {r['runner_img_per_s']:>10,.0f} "
          f"img/s   bare loop {r['bare_img_per_s']:>8,.0f} img/s   -> overhead {r['overhead_pct']:+.1f}% "
          "(target <= 3%)")


def _part_c(b: Bench) -> None:
    r = b.results["startup"] = bench_startup(b.args.data_root, b.args.repeats)
    print(f"(c) start-up                               first training step after {r['first_step_s']:.2f} s   "
          f"`python -m runner --cfg job` {r['cfg_job_s']:.2f} s (target <= 1 s)")


def _part_d(b: Bench) -> None:
    r = b.results["speed_options"] = bench_speed_options(b.data_args, b.device, b.args.compile)
    print("(d) speed options, default cnn            " + "   ".join(
        f"{k} {v:,.0f} img/s" if isinstance(v, float) else f"{k}: {v}" for k, v in r.items()))


def _part_e(b: Bench) -> None:
    r = b.results["data_parallel"] = bench_data_parallel(b.data_args)
    print(f"(e) data parallel on the CPU, same batch  1 process {r['one_process_img_per_s']:,.0f} img/s   "
          f"torchrun 2 processes {r['two_processes_img_per_s']:,.0f} img/s   same steps: {r['same_steps']}")


def _part_f(b: Bench) -> None:
    size = b.args.preset_train_size
    if not size:
        return
    rows = b.results["preset"] = bench_preset(b.data_args, b.device, size, b.args.preset_epochs)
    print(f"(f) +experiment=fast vs default cnn at the same wall-clock budget, {size} training images, test "
          "accuracy:")
    for row in rows:
        print(f"      fast {row['fast_epochs']} epoch(s) {row['fast_test_acc']:.3f} in {row['wall_s']:.0f} s"
              f"   |   cnn {row['cnn_epochs']} epoch(s) {row['cnn_test_acc']:.3f} in {row['cnn_wall_s']:.0f} s")


def _part_g(b: Bench) -> None:
    sizes = [1, b.args.latency_batch]
    r = b.results["latency"] = bench_latency(b.device, b.args.latency_model, sizes, 10 * b.args.repeats)
    print(f"(g) inference latency, model={b.args.latency_model}, eval mode, fp32, ms per forward pass (median, IQR),"
          " batch norms unfolded | folded into the conv before them:")
    for activation, row in r.items():
        print(f"      {activation:<11}" + "   ".join(
            f"batch {n}: {row['unfolded'][n]['median_ms']:8.3f} ({row['unfolded'][n]['iqr_ms']:.3f}) | "
            f"{row['folded'][n]['median_ms']:8.3f} ({row['folded'][n]['iqr_ms']:.3f}) "
            f"{row['unfolded'][n]['median_ms'] / row['folded'][n]['median_ms']:.2f}x" for n in sizes))


def _part_h(b: Bench) -> None:
    if not b.has_cifar:
        _no_cifar(b)
        return
    a = b.args
    r = b.results["baseline"] = bench_baseline(a.data_root, b.device, a.train_size, a.epochs, a.seeds)
    _print_versus("(h) default experiment vs baseline_cnn.py (its fixed seed replaced by the same seeds as "
                  "runner's)", r, "baseline", "baseline_cnn.py", tta=False)


def _part_i(b: Bench) -> None:
    if not b.has_cifar:
        if "h" not in b.args.only:  # (h) said it
            _no_cifar(b)
        return
    a = b.args
    r = b.results["airbench"] = bench_airbench(a.data_root, b.device, a.train_size, a.epochs, a.seeds, a.bf16)
    _print_versus("(i) +experiment=fast vs airbench_ref.py", r, "airbench_ref", "airbench_ref.py", tta=True)


def _no_cifar(b: Bench) -> None:
    print(f"(h), (i) skipped: they compare on CIFAR-10, and there is none under {b.args.data_root} (--data-root)")


def _part_j(b: Bench) -> None:
    a = b.args
    r = b.results["sweep_cost"] = bench_sweep_cost(b.data_args, b.device, a.sweep_images, a.sweep_trials)
    print(f"(j) a sweep's fixed cost per trial: 1 epoch on {a.sweep_images:,} images, default cnn, basic "
          f"launcher, {a.sweep_trials} trials (the first, which imports torch, apart):")
    for mode, m in r.items():
        parts = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in m["parts"].items())
        print(f"      test_trials={mode:<4}  fixed {m['fixed_s']:.2f} s of {m['trial_s']:.2f} s a trial = "
              f"{100 * m['ratio']:.1f}% (target <= 10%)   start-up {m['startup_s']:.2f} s ({parts}), between "
              f"trials {m['gap_s']:.2f} s; first trial's start-up {m['first_trial_startup_s']:.1f} s, after the "
              f"last trial {m['after_last_s']:.1f} s (the best trial's test when deferred)")


def _part_k(b: Bench) -> None:
    a = b.args
    base = [f"data.root={a.data_root}", "data.train_size=5000", *grid.SYNTHETIC[1:]] \
        if a.grid_cifar and b.has_cifar else list(grid.SYNTHETIC)
    base.append(f"device={b.device}")
    print(f"(k) the option grid at the defaults, {a.grid_epochs} epochs each ({' '.join(base)}):")
    with tempfile.TemporaryDirectory() as tmp:
        rows = grid.run_grid(grid.combinations(), base, a.grid_epochs, Path(tmp),
                             echo=lambda line: print("    " + line, flush=True))
    b.results["grid"] = {"base": base, "epochs": a.grid_epochs, "rows": rows}
    print("    " + grid.table(rows).splitlines()[-1])


# Each part of the module docstring, in the order they run: its letter (--only) and the function that runs and
# prints it. A new part is a function here and a letter in this table.
RUNS = {"a": _part_a, "b": _part_b, "c": _part_c, "d": _part_d, "e": _part_e, "f": _part_f, "g": _part_g,
        "h": _part_h, "i": _part_i, "j": _part_j, "k": _part_k}
PARTS = "".join(RUNS)  # "abcdefghijk": the letters of --only (runner.results reads them too)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("RUNNER_DATA_DIR", "data"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pipeline-images", type=int, default=CIFAR10_TRAIN_IMAGES)
    parser.add_argument("--engine-images", type=int, default=5_000, help="training images per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset-train-size", type=int, default=5000,
                        help="training images for (f); 0 skips (f)")
    parser.add_argument("--preset-epochs", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="include torch.compile in (d) (slow to compile on CPU)")
    parser.add_argument("--train-size", type=int, default=5000, help="training images for (h) and (i)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs for (h) and (i)")
    parser.add_argument("--seeds", type=int, default=2, help="runs of each side for (h) and (i)")
    parser.add_argument("--full", action="store_true",
                        help="(h) and (i) at full size: 10 epochs, 2 seeds, all 50,000 training images "
                             "(runner's default in (h): the 45,000 left after its validation split)")
    parser.add_argument("--bf16", action="store_true",
                        help="(i) in bf16 autocast on both sides (always on a GPU; on a CPU with native bf16, faster)")
    parser.add_argument("--sweep-trials", type=int, default=4, help="trials of each sweep in (j)")
    parser.add_argument("--sweep-images", type=int, default=5000, help="training images of a trial in (j)")
    parser.add_argument("--latency-model", default="cnn", help="the model= option whose latency (g) measures")
    parser.add_argument("--latency-batch", type=int, default=256, help="the large batch of (g), beside batch 1")
    parser.add_argument("--grid-epochs", type=int, default=2, help="epochs of each run of (k)")
    parser.add_argument("--grid-cifar", action="store_true",
                        help="(k) on 5,000 CIFAR-10 training images (--data-root) instead of the synthetic task")
    parser.add_argument("--only", default=PARTS, help=f"the parts to run, e.g. --only f (default: all, {PARTS})")
    parser.add_argument("--json", help="also write the results to this file")
    return parser


def main(argv=None) -> None:
    np.seterr(all="ignore")
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.only or set(args.only) - set(PARTS):
        parser.error(f"--only {args.only!r}: give letters of {PARTS}, e.g. --only f or --only abc")
    if args.full:
        args.train_size, args.epochs, args.seeds = CIFAR10_TRAIN_IMAGES, 10, 2
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    arrays, source = _arrays(args.data_root)
    print(f"runner bench on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, {source}\n")
    has_cifar = (Path(args.data_root) / data.CIFAR10_FOLDER).is_dir()
    data_args = [f"data.root={args.data_root}"] if has_cifar else ["data=synthetic", "data.train_examples=10000"]
    bench = Bench(args, device, arrays, has_cifar, data_args)
    for letter, part in RUNS.items():
        if letter in args.only:
            part(bench)
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=2) + "\n")


def _print_versus(title: str, r: dict, other: str, other_name: str, tta: bool) -> None:
    """A side-by-side table of (h) or (i): mean ± std over the seeds, wall seconds and their ratio."""
    held_out = r.get("held_out", 0)
    if r["train_size"] == CIFAR10_TRAIN_IMAGES:
        same = ("all 50,000 training images" if not held_out else
                f"the script on all 50,000 training images, runner on the {CIFAR10_TRAIN_IMAGES - held_out:,} its "
                f"default trains on (data.val_size={held_out:,} held out for validation)")
    else:
        same = (f"the same {r['train_size']:,} training images (runner: data.train_size first of its seeded split, "
                f"after its data.val_size={held_out:,} hold-out; the script is given a reordered copy whose images "
                "at the positions it takes are runner's)")
    precision = f", {r['precision']}" if "precision" in r else ""
    print(f"{title}: {r['epochs']} epochs, {same}, {len(r['runner'])} seed(s), runner on {r['device']}{precision}")
    header = f"      {'':<34}{'test acc':>18}" + (f"{'TTA acc':>18}" if tta else "") + f"{'wall s':>10}"
    print(header)
    walls = {}
    for name, runs in (("runner", r["runner"]), (other_name, r[other])):
        walls[name] = statistics.fmean(x["wall_s"] for x in runs)
        line = f"      {name[:34]:<34}{_mean_sd([x['test_acc'] for x in runs]):>18}"
        if tta:
            line += f"{_mean_sd([x['tta_acc'] for x in runs]):>18}"
        print(line + f"{walls[name]:>10.1f}")
    print(f"      runner's wall time / the script's: {walls['runner'] / walls[other_name]:.2f}  (each: the whole "
          "process, data loading included)")


if __name__ == "__main__":
    main()
