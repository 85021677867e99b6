"""`make bench` / `python -m runner.bench`: runner's speed, side by side with the usual alternative, in one run.

(a) input pipeline: runner's device-resident uint8 batches (crop + flip + normalize per batch) against torchvision's
    CIFAR10 dataset with RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize through
    DataLoader(num_workers=2);
(b) engine overhead: runner's train_one_epoch (TensorBoard logging on) against a bare hand-written loop, same model,
    batch size and device-resident data; alternated and repeated, the median of each reported;
(c) start-up: seconds from process start to the first training step, and for `python -m runner --cfg job`;
(d) speed options: img/s of the default cnn with each of trainer.channels_last / precision / compile switched on;
(e) data parallel: img/s of `torchrun --nproc_per_node=2` against one process, same global batch;
(f) the fast preset against the default cnn at the same wall-clock budget: test accuracy after each epoch.

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
from pathlib import Path

import numpy as np
import torch

from runner.config import CONFIG_DIR, register_resolvers, validate
from runner.config.schema import CIFAR10_TRAIN_IMAGES
from runner.data import loading as data
from runner.engine import train
from runner.engine.build import build_augmentation, build_preprocess


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


def bench_engine(arrays, device, train_size: int, repeats: int, overrides=()) -> dict:
    """One epoch over train_size images: runner's train_one_epoch (logging on) against a bare loop."""
    cfg = _config([f"device={device}", "trainer.progress=false", *overrides])
    splits = data.split(arrays, data.CIFAR10_CLASSES, 0, train_size, 0, device)
    from runner.engine.build import build_model, build_optimizer, build_schedule

    augmentation = build_augmentation(cfg)

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg, 10).to(device)
        pre = build_preprocess(cfg, splits.train_x).to(device)
        opt = build_optimizer(cfg, model)
        steps = data.steps_per_epoch(train_size, cfg.trainer.batch_size)
        sched = build_schedule(cfg, opt, steps * (repeats + 1), steps)
        return model, pre, opt, sched

    def runner_epoch(state, tracker):
        model, pre, opt, sched = state
        progress = train.Progress(False, 1, 1)
        result = train.train_one_epoch(model, pre, splits, opt, sched, torch.nn.CrossEntropyLoss(), cfg,
                                       torch.Generator(device=device).manual_seed(0), tracker, 0, 0, progress)
        return result.images / result.seconds

    def bare_epoch(state):
        model, pre, opt, sched = state
        gen = torch.Generator(device=device).manual_seed(0)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        n, start = 0, time.perf_counter()
        for xb, yb in runner_batches(splits.train_x, splits.train_y, augmentation, pre, cfg.trainer.batch_size, gen):
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n += len(yb)
        loss.item()  # wait for the device
        return n / (time.perf_counter() - start)

    from runner.engine.tracking import Tracker

    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(Path(tmp))
        ours_state, bare_state = fresh(), fresh()
        runner_epoch(ours_state, tracker)  # warm-up both
        bare_epoch(bare_state)
        ours, bare = [], []
        for _ in range(repeats):
            ours.append(runner_epoch(ours_state, tracker))
            bare.append(bare_epoch(bare_state))
        tracker.close()
    o, b = statistics.median(ours), statistics.median(bare)
    return {"runner_img_per_s": o, "bare_img_per_s": b, "overhead_pct": 100 * (b - o) / b,
            "model": cfg.model._target_, "batch_size": cfg.trainer.batch_size, "train_size": train_size}


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


def main(argv=None) -> None:
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
    parser.add_argument("--only", default="abcdef", help="the parts to run, e.g. --only f (default: all, abcdef)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if not args.only or set(args.only) - set("abcdef"):
        parser.error(f"--only {args.only!r}: give letters of abcdef, e.g. --only f or --only abc")
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())

    arrays, source = _arrays(args.data_root)
    print(f"runner bench on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, {source}\n")
    results = {}

    if "a" in args.only:
        r = results["input_pipeline"] = bench_input_pipeline(arrays, device, args.pipeline_images)
        print(f"(a) input pipeline, crop+flip+normalize    runner {r['runner_img_per_s']:>10,.0f} img/s   "
              f"torchvision DataLoader(num_workers=2) {r['torchvision_img_per_s']:>8,.0f} img/s   "
              f"-> {r['speedup']:.1f}x (target >= 10x)")
    if "b" in args.only:
        r = results["engine"] = bench_engine(arrays, device, args.engine_images, args.repeats)
        print(f"(b) engine, default cnn, batch {r['batch_size']}         runner {r['runner_img_per_s']:>10,.0f} "
              f"img/s   bare loop {r['bare_img_per_s']:>8,.0f} img/s   -> overhead {r['overhead_pct']:+.1f}% "
              "(target <= 3%)")
    if "c" in args.only:
        r = results["startup"] = bench_startup(args.data_root, args.repeats)
        print(f"(c) start-up                               first training step after {r['first_step_s']:.2f} s   "
              f"`python -m runner --cfg job` {r['cfg_job_s']:.2f} s (target <= 1 s)")

    has_cifar = (Path(args.data_root) / data.CIFAR10_FOLDER).is_dir()
    data_args = [f"data.root={args.data_root}"] if has_cifar else ["data=synthetic", "data.train_examples=10000"]
    if "d" in args.only:
        r = results["speed_options"] = bench_speed_options(data_args, device, args.compile)
        print("(d) speed options, default cnn            " + "   ".join(
            f"{k} {v:,.0f} img/s" if isinstance(v, float) else f"{k}: {v}" for k, v in r.items()))
    if "e" in args.only:
        r = results["data_parallel"] = bench_data_parallel(data_args)
        print(f"(e) data parallel on the CPU, same batch  1 process {r['one_process_img_per_s']:,.0f} img/s   "
              f"torchrun 2 processes {r['two_processes_img_per_s']:,.0f} img/s   same steps: {r['same_steps']}")
    if "f" in args.only and args.preset_train_size:
        rows = results["preset"] = bench_preset(data_args, device, args.preset_train_size, args.preset_epochs)
        print(f"(f) +experiment=fast vs default cnn at the same wall-clock budget, {args.preset_train_size} "
              "training images, test accuracy:")
        for row in rows:
            print(f"      fast {row['fast_epochs']} epoch(s) {row['fast_test_acc']:.3f} in {row['wall_s']:.0f} s"
                  f"   |   cnn {row['cnn_epochs']} epoch(s) {row['cnn_test_acc']:.3f} in {row['cnn_wall_s']:.0f} s")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
