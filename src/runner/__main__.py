"""`python -m runner` and the `runner` console script: compose the config with Hydra, then run one job."""
# ruff: noqa: E402 (SIGINT is taken over before the imports below, which take a while)

import signal
import sys

INTERRUPTED = "interrupted by SIGINT while starting: nothing was written. Run the command again to start."


def _interrupted(signum, frame) -> None:
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(130)


# Ctrl-C while Python imports Hydra is one line, not a traceback; cli() gives SIGINT back to Python's
# KeyboardInterrupt as Hydra starts.
if __name__ == "__main__" or sys.argv[0].endswith("runner"):  # `python -m runner`, the `runner` command
    signal.signal(signal.SIGINT, _interrupted)

import re
from pathlib import Path

import hydra
from omegaconf import DictConfig

from runner.config import CONFIG_DIR, ConfigError, register_resolvers
from runner.config.command_line import check_command_line
from runner.engine.distributed import agree_on_run_dir
from runner.job import check_run_dir

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from runner.job import run_job  # deferred: torch is imported only once a job really runs

    return run_job(cfg)


# Groups whose options are not in the default config: a `+` adds them (`+experiment=fast`, `-m +sweep=lr_wd`).
_ADDED_GROUPS = ("experiment", "sweep")
# Folders of configs/ that are not groups of a run: their own commands read them.
_NOT_GROUPS = ("hydra", "lesson")
_HELP_WIDTH = 118


def describe(path: Path) -> str:
    """An option file's one-line description: the first sentence of its opening comment (the `@package` line and
    the example commands left out)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package") or text.startswith(("python -m", "make ")):
            continue
        lines.append(text)
    words = " ".join(lines)
    # a sentence ends at a full stop before a capital, not at "et al." or "e.g."
    return re.split(r"(?<!\bal)(?<!e\.g)(?<!i\.e)(?<=\.)\s+(?=[A-Z])", words, maxsplit=1)[0] if words else "-"


def help_text() -> str:
    """`python -m runner --help`: how to call it, then every config group with its options, each with its
    description, read from configs/ (fast: no Hydra composition, no torch)."""
    defaults = {}
    for line in (CONFIG_DIR / "config.yaml").read_text().splitlines():
        found = re.match(r"\s+- (\w+): (.+)", line)
        if found:
            defaults[found[1]] = found[2].strip("[] ").split(",")[0].strip()
    out = [
        "runner: train and compare CIFAR-10 models; every option is a Hydra override.",
        "",
        "Usage:",
        "  python -m runner [group=option ...] [key=value ...]   one run, e.g. optimizer=adam optimizer.lr=1e-3 "
        "trainer.epochs=5",
        "  python -m runner +experiment=fast                     a preset: `+` adds a group the default config does "
        "not have",
        "  python -m runner -m +sweep=lr_wd                      a sweep (multirun): the trials of +sweep=<option>",
        "  python -m runner -m optimizer=sgd,adam seed=0,1       a grid of your own, from comma-separated values",
        "  python -m runner --cfg job [overrides]                the composed config, every key with its value "
        "(nothing runs)",
        "  python -m runner --hydra-help                         Hydra's own flags",
        "  python -m runner.lesson [name]                        the lectures' claims, one command each "
        "(configs/lesson/)",
        "  python -m runner.lr_find [overrides]                  the learning-rate range test of a run's config",
        "  python -m runner.pictures                             the optimizer race on 2-D surfaces",
        "  python -m runner.compare ARM ARM ...                  a fair comparison: each arm's lr tuned, paired seeds",
        "  python -m runner.grid                                 does every option combination train at the defaults?",
        "  python -m runner.results [parts|all]                  regenerate the published numbers (docs/results/)",
        "",
        "Each group is a folder of configs/, each option a file there; * marks the default. The keys and their "
        "comments: configs/config.yaml.",
    ]
    groups = sorted(d.name for d in CONFIG_DIR.iterdir() if d.is_dir() and d.name not in _NOT_GROUPS)
    for group in sorted(groups, key=lambda g: (g in _ADDED_GROUPS, g)):
        files = sorted(p for p in (CONFIG_DIR / group).rglob("*.yaml"))
        how = f"+{group}=<option>" if group in _ADDED_GROUPS else f"{group}=<option>"
        how = f"-m {how}, a multirun" if group == "sweep" else how
        out += ["", f"{group} ({how}):"]
        names = [str(p.relative_to(CONFIG_DIR / group).with_suffix("")) for p in files]
        width = max(len(n) for n in names) + 2
        for name, path in zip(names, files, strict=True):
            mark = "*" if defaults.get(group) == name else " "
            line = f"  {mark}{name:<{width}}{describe(path)}"
            out.append(line if len(line) <= _HELP_WIDTH else line[:_HELP_WIDTH - 3].rstrip() + "...")
    return "\n".join(out) + "\n"


def cli() -> None:
    """The command line: `--help` from the option files; a config mistake (an option or key that does not exist, a
    bad value) is one line, before Hydra composes for the run (and makes a run directory); under torchrun, every rank then uses rank 0's run
    directory. Ctrl-C at any moment is one line and exit 130."""
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        sys.stdout.write(help_text())
        return
    try:
        check_command_line(sys.argv[1:])
        check_run_dir(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        sys.argv = agree_on_run_dir(sys.argv)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the job cleans up after a KeyboardInterrupt
        main()
    except KeyboardInterrupt:  # while Hydra composes (the job's own line says more)
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
