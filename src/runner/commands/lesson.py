"""The lectures' claims, one command each:

    python -m runner.lesson                          # every lesson and its claim
    python -m runner.lesson l1_sparsity              # state the claim, run it (about 1-2 min on 2 CPU cores), print
                                                     # the numbers, their spread and the verdict, draw the figure
    python -m runner.lesson l1_sparsity --full       # the real thing (longer runs on all of CIFAR-10)
    python -m runner.lesson l1_sparsity seeds=[0,1,2,3,4] -- data.root=/path/to/cifar device=cuda

Arguments `key=value` change the lesson's own keys (its file: configs/lesson/<name>.yaml); those after `--` are
runner overrides given to every run (checked before any run; Hydra's own settings are refused: the runs' directories
lie under the lesson's). Everything goes to outputs/lessons/<name>/<date>_<time>/ (or --out): lesson.md (claim,
table, verdict, command), lesson.json, the figure, and a run directory per run (`tensorboard --logdir` on the
lesson directory shows them side by side).

Ctrl-C stops a lesson (exit 130) and prints the command that resumes it: the same one with `--out <its directory>`.
Run again into the same --out, a lesson keeps the runs that ended there and resumes the unfinished ones.
"""

import argparse
import json
import logging
import shlex
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from runner import lessons
from runner.config import ConfigError, UserError
from runner.config.schema import check_choices
from runner.data import checkpoint
from runner.lessons.lab import Lab, RunInterrupted, runs_figure, runs_table
from runner.lessons.verdict import INCONCLUSIVE, Stat, Verdict

log = logging.getLogger("runner")


class Interrupted(Exception):
    """A lesson stopped by Ctrl-C or SIGTERM: the message says where, and the command that resumes it."""

    def __init__(self, message: str, code: int = 130):
        super().__init__(message)
        self.code = code  # the shell's code for the signal: 128 + its number


class Terminated(KeyboardInterrupt):
    """SIGTERM while a lesson is between runs."""


def _terminated(signum, frame):
    raise Terminated


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def split_user(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the command's own arguments, the runner overrides after `--`)."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def parse(argv: list[str]) -> argparse.Namespace:
    argv, user = split_user(argv)
    ap = argparse.ArgumentParser(prog="python -m runner.lesson", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="the lesson to run; none: list them")
    ap.add_argument("overrides", nargs="*", help="key=value: the lesson's own keys (seeds=[0,1,2], ...)")
    ap.add_argument("--size", choices=("quick", "full", "test"), default="quick",
                    help="quick: ~1-2 min on 2 CPU cores on a slice of CIFAR-10 (default); full: the real thing; "
                         "test: the hard synthetic data, seconds (what the test suite checks)")
    ap.add_argument("--full", action="store_const", const="full", dest="size", help="the same as --size full")
    ap.add_argument("-v", "--verbose", action="store_true", help="every run's own log lines")
    ap.add_argument("--out", default=None, help="the lesson's directory (default outputs/lessons/<name>/<time>)")
    args = ap.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        ap.error(f"{bad[0]!r} is not key=value; runner overrides go after `--`")
    args.user = user
    return args


def command_line(name: str, overrides, size: str, user, out: Path | None = None) -> str:
    """The command that runs this lesson (with `--out`: the command that resumes it in that directory)."""
    words = ["python", "-m", "runner.lesson", name, *overrides, *([f"--size={size}"] if size != "quick" else []),
             *(["--out", str(out)] if out is not None else []), *(["--", *user] if user else [])]
    return " ".join(shlex.quote(w) for w in words)


def check_user(user: list[str]) -> None:
    """The runner overrides after `--`, before any composition: each `group=option` names an option file (one line
    with a did-you-mean, as `python -m runner` says it), and no Hydra setting, which a lesson would silently ignore
    (it composes runner's config and runs no Hydra job: its runs' directories lie under --out)."""
    for item in user:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key == "hydra.run.dir":
            raise ConfigError(f"{item}: a lesson puts each run in a directory of its own under the lesson's directory, "
                              f"so hydra.run.dir cannot place it: use `--out {value or '<dir>'}` instead.")
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            raise ConfigError(f"{item}: a lesson runs no Hydra job, so Hydra's settings do nothing here: remove it "
                              "(the lesson's directory is given with --out).")
    check_choices(list(user))


def listing() -> str:
    lines = ["Lessons (python -m runner.lesson NAME; --full for the real thing):", ""]
    lines += ["  " + lessons.summary_line(name) for name in lessons.names()]
    return "\n".join(lines)


def run_lesson(name: str, overrides: list[str] = (), size: str = "quick", user: list[str] = (),
               out: Path | None = None, verbose: bool = False):
    """Run one lesson; returns its Result (also written to <out>/lesson.md and lesson.json)."""
    from hydra.utils import get_method

    lesson = lessons.load(name, list(overrides))
    if size not in lesson.sizes:
        raise ConfigError(f"--size {size} is not offered by lesson {name}: it has {', '.join(lesson.sizes)}.")
    check_user(list(user))
    out = Path(out or Path("outputs/lessons") / name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    resume = command_line(name, overrides, size, user, out)
    lab = Lab(lesson, out, size, list(user), name, verbose, resume_command=resume)
    for arm in lesson.get("arms") or [None]:  # a bad override is one line before anything runs or is written
        lab.config(arm, lesson.seeds[0])
    again = (out / "lesson.json").is_file() or any(out.glob("*/metrics.json"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"lesson {name} ({lesson.source})\n  claim: {' '.join(str(lesson.claim).split())}\n"
          f"  size {size}, seeds {list(lesson.seeds)}; runs in {out}"
          + (" (the runs that ended there are kept, the unfinished ones resumed)" if again else ""), flush=True)
    started = time.perf_counter()
    # SIGTERM between runs (a run's own handler stops it after its step) ends the lesson as Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _terminated) if _main_thread() else None
    try:
        result = get_method(lesson._target_)(lesson, lab)
        gated(result, lab, name)
    except RunInterrupted as err:
        raise Interrupted(f"lesson {name} stopped: {err}; its finished runs are kept in {out}. To resume: {resume}",
                          128 + getattr(signal, err.signal, signal.SIGINT)) from None
    except KeyboardInterrupt as err:
        how, code = ("SIGTERM", 128 + signal.SIGTERM) if isinstance(err, Terminated) else ("Ctrl-C", 130)
        raise Interrupted(f"lesson {name} stopped by {how}; its finished runs are kept in {out}. To resume: "
                          f"{resume}", code) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - started
    command = command_line(name, overrides, size, user)
    text = report(name, lesson, result, size, wall, command, out, lab.runs_done)
    checkpoint.write_text(text, out / "lesson.md")
    checkpoint.write_text(json.dumps({
        "lesson": name, "claim": " ".join(str(lesson.claim).split()), "source": str(lesson.source),
        "size": size, "seeds": list(lesson.seeds), "verdict": result.verdict.verdict,
        "reason": result.verdict.reason, "notes": result.notes, "wall_s": wall, "runs": lab.runs_done,
        "columns": result.columns, "rows": [{k: _plain(v) for k, v in r.items()} for r in result.rows],
        "figure": result.figure, "runs_figure": result.runs_figure, "run_records": lab.records, "tuning": lab.tuning,
        "command": command}, indent=2), out / "lesson.json")
    print(text, flush=True)
    return result


def gated(result, lab, name: str) -> None:
    """The sanity gates (Lab.gate_failures) over every run the lesson made: a run that diverged, failed or stayed at
    chance, in an arm whose failing is not the claim, turns the verdict into "inconclusive", naming the runs and
    what to change; the comparison's own reading stays as a note. Also draws every run's accuracy (runs figure)."""
    failures = lab.gate_failures()
    result.records = lab.records
    result.notes += lab.tuning_notes()
    result.runs_figure = runs_figure(lab.out / f"{name}_runs.png", lab.records, f"{name}: every run")
    if not failures:
        return
    result.notes.insert(0, f"the comparison alone read: {result.verdict.verdict} ({result.verdict.reason}); it does "
                           "not count, since not every run trained")
    result.verdict = Verdict(INCONCLUSIVE, "not every run trained, so the claim was not tested: " +
                             "; ".join(failures) + ". Lower the lesson's lr (`-- optimizer.lr=...`) for a run that "
                             "diverged, give a run at chance more epochs (`-- trainer.epochs=...`) or another seed "
                             "set (`seeds=[...]`)")


def report(name, lesson, result, size, wall, command, out, runs) -> str:
    lines = [f"## {name}", "", f"**Claim** ({lesson.source}): {' '.join(str(lesson.claim).split())}", "",
             f"`{command}` ({size}, seeds {list(lesson.seeds)}, {runs} runs, {wall:.0f} s)", "",
             result.table(), "", f"**Verdict: {result.verdict.verdict}.** {result.verdict.reason}."]
    lines += [f"- {note}" for note in result.notes]
    if result.records:
        lines += ["", "Every run (gate: what a run must pass before the verdict counts it):", "",
                  runs_table(result.records)]
    if result.figure:
        lines.append(f"\nFigure: {result.figure}")
    if result.runs_figure:
        lines.append(f"Every run's accuracy: {result.runs_figure}")
    if runs:
        lines.append(f"Every run's curves: tensorboard --logdir {out}")
    return "\n".join(lines) + "\n"


def _plain(value):
    if isinstance(value, Stat):
        return {"mean": value.mean, "std": value.std, "values": value.values}
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.name is None:
            print(listing())
            return 0
        run_lesson(args.name, args.overrides, args.size, args.user, args.out, args.verbose)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:  # before the lesson began: nothing to resume
        print("interrupted: nothing was run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
