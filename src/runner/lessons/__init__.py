"""Lessons: each claim of the lectures as one command that states the claim, runs the experiment, prints the
measured numbers with their spread and a verdict computed from them, and writes a figure.

A lesson is a config file, `configs/lesson/<name>.yaml`:

  claim:   the claim as the lecture puts it
  source:  where the lecture says it
  _target_: the function that runs it, `f(lesson, lab) -> Result` (runner.lessons.<topic>.<name>)
  seeds:   the seeds every arm runs with (the spread of the verdict)
  sizes:   {quick: [...], full: [...], test: [...]}: runner overrides for each size. quick (the default) takes about
           a minute or two on a 2-core CPU on a slice of CIFAR-10; full is the real thing; test runs on the hard
           synthetic data in seconds (what the test suite asserts).
  recipe:  [runner overrides]: the optimizer, lr, schedule and batch size the lesson is designed for, applied before
           the size's, so that a change of runner's defaults moves no lesson
  arms:    {name: [runner overrides]}: the settings the lesson compares (optional)
  tune:    {factors: [...], seed: S}: each arm's lr searched at equal budget on the validation split before its
           seeds run (factors x the arm's own lr; optional; runner.lessons.lab.Lab.tuned_lr)
  gates:   {may_fail: [arms], min_gain: 0.05}: every run must complete and learn above chance before the verdict
           counts it (else the verdict is "inconclusive"); may_fail names arms whose failing is the claim
  ...      the lesson's own keys (thresholds, layer counts), each commented in its file

The function measures with the Lab (runner.lessons.lab: real runner runs, each a run directory that TensorBoard
reads) and returns a Result: the table, the verdict, a figure. Verdicts come from runner.lessons.verdict, which
takes the spread over seeds into account; no lesson writes its outcome in advance.
"""

import difflib
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.config import CONFIG_DIR, ConfigError

LESSON_DIR = CONFIG_DIR / "lesson"
SIZES = ("quick", "full", "test")
REQUIRED = ("claim", "source", "_target_", "seeds", "sizes")


def names() -> list[str]:
    return sorted(p.stem for p in LESSON_DIR.glob("*.yaml"))


def path_of(name: str) -> Path:
    path = LESSON_DIR / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"lesson {name!r} does not exist: {hint}`python -m runner.lesson` lists them all "
                          f"(the files of {LESSON_DIR}).")
    return path


def load(name: str, overrides: list[str] = ()) -> DictConfig:
    """The lesson's config with `key=value` overrides of its own keys applied; checked."""
    path = path_of(name)
    try:
        lesson = OmegaConf.load(path)
    except Exception as err:  # a YAML syntax error: one line that names the file and the place
        raise ConfigError(f"{path} cannot be read: {' '.join(str(err).split())}") from None
    for item in overrides:
        key = item.split("=", 1)[0]
        if OmegaConf.select(lesson, key, default=None) is None and key not in lesson:
            raise ConfigError(f"{key} is not a key of lesson {name}: its keys are {', '.join(k for k in lesson)}. "
                              "Runner overrides (data.root=..., device=...) are passed after `--`.")
    if overrides:
        lesson = OmegaConf.merge(lesson, OmegaConf.from_dotlist(list(overrides)))
    check(name, lesson)
    return lesson


def check(name: str, lesson: DictConfig) -> None:
    missing = [k for k in REQUIRED if k not in lesson]
    if missing:
        raise ConfigError(f"lesson {name} lacks {', '.join(missing)}: every lesson file has {', '.join(REQUIRED)}.")
    seeds = lesson.seeds
    if not isinstance(seeds, ListConfig) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds={seeds} is invalid in lesson {name}: a non-empty list of integers, e.g. "
                          "seeds=[0,1,2].")
    unknown = set(lesson.sizes) - set(SIZES)
    if unknown:
        raise ConfigError(f"lesson {name}: sizes has {', '.join(sorted(unknown))}; allowed: {', '.join(SIZES)}.")
    if lesson.get("recipe") is not None and not isinstance(lesson.recipe, ListConfig):
        raise ConfigError(f"lesson {name}: recipe must be a list of runner overrides, e.g. [optimizer=momentum].")
    tune = lesson.get("tune")
    if tune is not None and not (isinstance(tune, DictConfig) and isinstance(tune.get("factors"), ListConfig)
                                 and tune.factors and all(isinstance(f, (int, float)) and f > 0 for f in tune.factors)
                                 and isinstance(tune.get("seed"), int)):
        raise ConfigError(f"lesson {name}: tune={tune} is invalid: {{factors: [positive numbers], seed: <int>}}, "
                          "e.g. tune={factors: [0.25,0.5,1,2,4], seed: 100}.")
    for arm, overrides in (lesson.get("arms") or {}).items():
        if not isinstance(overrides, ListConfig):
            raise ConfigError(f"lesson {name}: arms.{arm} must be a list of runner overrides, e.g. [init=he_normal].")


def summary_line(name: str) -> str:
    """`name: the claim's first sentence`, for the listing."""
    lesson = OmegaConf.load(LESSON_DIR / f"{name}.yaml")
    claim = " ".join(str(lesson.get("claim", "")).split())
    first = claim.split(". ")[0].split("; ")[0].split(": ")[0].rstrip(".")
    if len(first) > 90:
        first = first[:87].rsplit(" ", 1)[0] + "..."
    return f"{name:26s} {first}"
