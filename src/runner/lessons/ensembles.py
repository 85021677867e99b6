"""Lessons on ensembles: several models' averaged predictions against one model's."""

from runner.commands.ensemble import evaluate_ensemble
from runner.lessons.lab import Lab, bar_figure
from runner.lessons.verdict import Result, Stat, accuracy_noise, all_of, greater


def snapshot_and_seed_ensembles(lesson, lab: Lab) -> Result:
    """Each seed trains one run with warm restarts (schedule.snapshot_ensemble: a snapshot at the end of every
    cycle, their averaged softmax tested by the run); then the seeds' final models are averaged by runner.ensemble."""
    from pathlib import Path

    runs = [lab.run("snapshots", seed) for seed in lesson.seeds]
    cycles = sum(1 for k in runs[0] if k.startswith("test_acc_snapshot_") and k[-1].isdigit())
    last = Stat([m["test_acc"] for m in runs])
    each = Stat([m[f"test_acc_snapshot_{k}"] for m in runs for k in range(1, cycles + 1)])
    snapshot = Stat([m["test_acc_snapshot_ensemble"] for m in runs])
    seeds = evaluate_ensemble([Path(m["run_dir"]) for m in runs], device_name=lab.config("snapshots", 0)[0].device)
    test_n = seeds["test_images"]
    members = Stat([m["acc"] for m in seeds["members"]])
    seed_ensemble = Stat([seeds["ensemble"]["acc"]])
    floor = accuracy_noise(last.mean, test_n)
    verdict = all_of(
        greater(snapshot, last, f"ensemble of {cycles} snapshots", "the last snapshot alone", "test acc", floor=floor),
        greater(seed_ensemble, members, f"ensemble of {len(runs)} seeds", "one seed's model", "test acc",
                floor=floor))
    rows = [{"model": "one model (the run's last weights)", "test acc": last, "models averaged": 1},
            {"model": "each snapshot alone", "test acc": each, "models averaged": 1},
            {"model": f"snapshot ensemble (one run, {cycles} cycles)", "test acc": snapshot, "models averaged": cycles},
            {"model": f"seed ensemble ({len(runs)} runs)", "test acc": seed_ensemble, "models averaged": len(runs)}]
    figure = bar_figure(lab.figure_path(), {"last snapshot": last, "each snapshot": each,
                                            "snapshot ensemble": snapshot, "seed ensemble": seed_ensemble},
                        "test accuracy", "one model vs snapshot and seed ensembles")
    notes = [f"snapshots: the weights at the end of each of the {cycles} cosine cycles (schedule=cosine_restarts); "
             "a snapshot ensemble costs one training run, a seed ensemble one run per member",
             f"the seed ensemble is one number (the {len(runs)} seeds' final models averaged by runner.ensemble, "
             f"NLL {seeds['ensemble']['nll']:.3f} vs members' {sum(m['nll'] for m in seeds['members']) / len(runs):.3f})"
             f": its spread is the test set's binomial noise, about +-{floor:.3f} on {test_n} images, the floor used"]
    if each.mean < last.mean - 2 * floor:
        notes.append(f"the snapshots are far from equally good (each alone {each.text()} against the last "
                     f"{last.text()}): cycles this short leave the early snapshots unconverged, and averaging them in "
                     "drags the ensemble down; Huang et al. train every cycle to convergence (40+ epochs each), "
                     "which the --full size comes closer to")
    return Result(["model", "test acc", "models averaged"], rows, verdict, notes, figure)
