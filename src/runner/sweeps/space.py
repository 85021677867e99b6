"""A sweep's search space, written in Hydra's override grammar (hydra.sweeper.params and the command line; the
command line wins for the same key), and turned into Optuna distributions:

    a,b,c   choice(a,b,c)               categorical: the axes of a grid (sampler=grid), else sampled
    range(a,b)   range(a,b,step=s)      stepped integers (or floats) from a up to b, b excluded as in Hydra's grammar
                                        and its basic sweeper: the values a grid runs, or a stepped distribution
    shuffle(range(a,b))                 categorical over the same values
    interval(lo,hi)   int(interval(lo,hi))   uniform float / integer, both ends included
    tag(log, interval(lo,hi))           log-uniform (also of an int(interval))

Any other override (`trainer.epochs=3`) is given to every trial as it is. Imported by the sweeper (Optuna is
imported inside the functions that need it).
"""

import itertools
import math
from dataclasses import dataclass
from decimal import Decimal

from hydra.core.override_parser.overrides_parser import OverridesParser


@dataclass
class Param:
    name: str  # the override's key as written (`optimizer.lr`, `optimizer`, `+foo`)
    distribution: object  # an optuna.distributions distribution
    texts: dict | None = None  # categorical: choice -> its text in an override
    values: list | None = None  # the finite values a grid runs, in the order written; None: an interval
    decimals: int | None = None  # a stepped float range: the digits its values are rounded to (no 0.30000000000004)
    written: str = ""  # the expression as written (`range(1,4)`), for the start-up notices

    def clean(self, value):
        """The value as the search space writes it: a stepped float rounded to its range's digits."""
        return round(float(value), self.decimals) if self.decimals is not None else value

    def override(self, value) -> str:
        return f"{self.name}={self.text(value)}"

    def text(self, value) -> str:
        """The value as an override writes it."""
        if self.texts is not None:
            return self.texts[value]
        return value_text(self.clean(value))

    def describe(self) -> dict:
        """The range or choices, for runner.report (search_space.json)."""
        d = self.distribution
        if self.texts is not None:
            return {"kind": "categorical", "choices": list(self.texts.values())}
        kind = type(d).__name__.removesuffix("Distribution").lower()
        out = {"kind": kind, "low": d.low, "high": d.high, "log": d.log}
        return {**out, "step": d.step} if self.values is not None else out

    def label(self, value) -> str:
        """Short, for a directory name: 3 significant digits of a sampled float."""
        if self.texts is not None:
            return self.texts[value]
        value = self.clean(value)
        return f"{value:.3g}" if isinstance(value, float) else str(value)


def value_text(value) -> str:
    """A plain value as Hydra's override grammar writes it (true, null, 0.001)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value) if isinstance(value, float) else str(value)


def param_of(name: str, distribution) -> Param:
    """A Param for a distribution that no override wrote (custom_search_space suggests it in Python)."""
    if hasattr(distribution, "choices"):
        return Param(name, distribution, {c: value_text(c) for c in distribution.choices})
    return Param(name, distribution)


@dataclass
class SearchSpace:
    fixed: list[str]  # overrides every trial gets
    params: dict[str, Param]

    def corners(self):
        """One value set per choice and per interval end (the others at their first choice or low end): enough
        to catch a bad option name or an out-of-range bound before any trial runs."""
        first = {name: _ends(p.distribution)[0] for name, p in self.params.items()}
        yield first
        for name, p in self.params.items():
            for value in _ends(p.distribution)[1:]:
                yield {**first, name: value}

    def fixed_keys(self) -> set[str]:
        return {line.partition("=")[0].lstrip("+~") for line in self.fixed}


def _ends(distribution) -> list:
    return list(distribution.choices) if hasattr(distribution, "choices") else [distribution.low, distribution.high]


def _plain(value) -> bool:
    return value is None or type(value) in (str, int, float, bool)


def parse_space(lines: list[str], config_loader=None) -> SearchSpace:
    """The search space of these override lines (later lines replace earlier ones with the same key)."""
    overrides = {}
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(lines):
        overrides[override.get_key_element()] = override
    fixed, params = [], {}
    for key, override in overrides.items():
        written = override.input_line.partition("=")[2]
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif override.is_interval_sweep():
            params[key] = _interval(key, override)
        elif override.is_range_sweep() and not override.value().shuffle:
            params[key] = _range(key, override)
        else:
            sweep = override.value()
            sweep.shuffle = False  # the study sees the same space on every run: choices in the order written
            texts = list(override.sweep_string_iterator())
            choices = [v if _plain(v) else t for v, t in zip(override.sweep_iterator(), texts, strict=True)]
            if override.is_range_sweep():  # shuffle(range(...)): the drift-free values of the range
                choices = _range(key, override).values
                texts = [value_text(c) for c in choices]
            from optuna.distributions import CategoricalDistribution

            params[key] = Param(key, CategoricalDistribution(choices), dict(zip(choices, texts, strict=True)),
                                values=choices)
        if key in params:
            params[key].written = written
    return SearchSpace(fixed, params)


def _interval(key: str, override) -> Param:
    from optuna.distributions import FloatDistribution, IntDistribution

    sweep = override.value()
    log_scale = "log" in sweep.tags
    if not sweep.start < sweep.end or (log_scale and sweep.start <= 0):
        need = "0 < lo < hi for a log scale" if log_scale else "lo < hi"
        raise ValueError(f"{override.input_line}: the interval needs {need}. Fix the bounds of `{key}`.")
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return Param(key, IntDistribution(sweep.start, sweep.end, log=log_scale))
    return Param(key, FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale))


def _range(key: str, override) -> Param:
    """range(start, stop, step=s): the values Hydra's range lists (stop excluded), computed in decimal so that
    range(0, 1, step=0.1) holds 0.7, not 0.7000000000000001; as a stepped Int- or FloatDistribution."""
    from optuna.distributions import FloatDistribution, IntDistribution

    sweep = override.value()
    start, stop, step = (Decimal(str(x)) for x in (sweep.start, sweep.stop, sweep.step))
    n = math.ceil((stop - start) / step) if step else 0
    if n <= 0:
        raise ValueError(f"{override.input_line}: the range is empty (Hydra's range(a, b, step=s) runs a, a+s, ... "
                         f"while below b). Fix the bounds of `{key}`.")
    values = [start + i * step for i in range(n)]
    low, high = min(values), max(values)
    if any(isinstance(x, float) for x in (sweep.start, sweep.stop, sweep.step)):
        decimals = max(0, *(-x.normalize().as_tuple().exponent for x in (start, step)))
        return Param(key, FloatDistribution(float(low), float(high), step=float(abs(step))),
                     values=[round(float(v), decimals) for v in values], decimals=decimals)
    return Param(key, IntDistribution(int(low), int(high), step=int(abs(step))), values=[int(v) for v in values])


def grid_points(space: SearchSpace) -> list[dict]:
    """Every combination of the finite values (choices, ranges), in the order written (the last key varies
    fastest)."""
    names = list(space.params)
    values = [space.params[n].values for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def short_keys(names: list[str]) -> dict[str, str]:
    """Keys as a directory name shows them: the last two parts of a longer dotted key (`regularization.l2.value`
    -> `l2.value`), unless two keys would then read the same."""
    short = {n: ".".join(n.split(".")[-2:]) for n in names}
    return short if len(set(short.values())) == len(short) else {n: n for n in names}


def trial_dirname(number: int, labels: list[str], limit: int = 100) -> str:
    """`007_optimizer=adam,optimizer.lr=0.00123`: the trial number, then what this trial sets. This is also the
    run's name in TensorBoard, so it says what differs; characters a path or a shell would trip on become `-`."""
    name = f"{number:03d}" + ("_" + ",".join(labels) if labels else "")
    safe = "".join(c if c.isalnum() or c in "._=,+-[]" else "-" for c in name)
    return safe[:limit]


def range_notices(space: SearchSpace) -> list[str]:
    """One line per range of a sampled search: Hydra's Optuna sweeper plugin includes the stop of range(a, b), this
    sweeper (as Hydra's grammar and its basic sweeper) does not."""
    out = []
    for key, p in space.params.items():
        if p.values is None or p.texts is not None or not p.written.startswith("range"):
            continue
        d = p.distribution
        out.append(f"{key}={p.written} samples {p.clean(d.low)} to {p.clean(d.high)} in steps of {p.clean(d.step)}: "
                   "the stop is excluded, as in Hydra's grammar and a grid (Hydra's Optuna sweeper plugin would "
                   "include it); to include it, raise the stop by one step")
    return out
