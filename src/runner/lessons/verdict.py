"""Verdicts from measured numbers: a claim is "reproduced" only when the measured difference, in the direction the
claim gives, stands clear of the spread over seeds; otherwise the verdict says "not reproduced here" and why (too
small against the spread, or the other way round). Plain Python and statistics: nothing here knows what a lesson
expects to see."""

import math
import statistics
from dataclasses import dataclass, field

# A difference counts when it exceeds this many standard errors of the difference (about 95% for a normal spread).
Z = 2.0

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced here"
# A run of the comparison did not happen as planned (diverged, stayed at chance, failed): the claim was not tested.
INCONCLUSIVE = "inconclusive"


@dataclass
class Stat:
    """A measurement over seeds: its values, mean, sample standard deviation (0 for one value)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        if not all(math.isfinite(v) for v in self.values):  # a diverged run: no spread to speak of
            return math.nan
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    def se(self, floor: float = 0.0) -> float:
        """Standard error of the mean, at least `floor` (a known per-measurement noise, e.g. binomial noise of an
        accuracy on a finite set, divided by sqrt(n))."""
        std = self.std
        if math.isnan(std):
            return math.inf
        return max(std / math.sqrt(self.n) if self.n > 1 else 0.0, floor / math.sqrt(max(self.n, 1)))

    def text(self, digits: int = 3) -> str:
        if self.n == 1 or math.isnan(self.std):
            if self.n > 1:
                return "[" + ", ".join(f"{v:.{digits}g}" for v in self.values) + "]"
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} ± {self.std:.2g}"


def accuracy_noise(acc: float, examples: int) -> float:
    """The binomial standard deviation of an accuracy measured on `examples` images."""
    acc = min(max(acc, 0.0), 1.0)
    return math.sqrt(acc * (1 - acc) / max(examples, 1))


@dataclass
class Verdict:
    verdict: str  # REPRODUCED, NOT_REPRODUCED or INCONCLUSIVE
    reason: str   # the numbers that decided it

    @property
    def reproduced(self) -> bool:
        return self.verdict == REPRODUCED

    def text(self) -> str:
        return f"{self.verdict}: {self.reason}"


def greater(a: Stat, b: Stat, a_name: str, b_name: str, measure: str, floor: float = 0.0,
            margin: float = 0.0, tries: int = 1) -> Verdict:
    """Is `a` larger than `b` (by more than `margin`), beyond the spread? floor: a known noise per measurement
    (see Stat.se). tries: how many comparisons the claim accepts any one of ("one of the k schedules beats
    constant"): each must then clear the Bonferroni-corrected bar, so that k tries are not k chances of noise."""
    return _compare(a, b, a_name, b_name, measure, 1.0, floor, margin, tries)


def less(a: Stat, b: Stat, a_name: str, b_name: str, measure: str, floor: float = 0.0,
         margin: float = 0.0, tries: int = 1) -> Verdict:
    """Is `a` smaller than `b` (by more than `margin`), beyond the spread?"""
    return _compare(a, b, a_name, b_name, measure, -1.0, floor, margin, tries)


def critical(tries: int = 1, df: int | None = None) -> float:
    """How many standard errors a difference must clear: Z (about a two-sided 95%) for one comparison of
    independent arms; for `tries` comparisons the Bonferroni-corrected normal quantile; with df (a paired test on
    df + 1 seeds) Student's t quantile, which is wider for few seeds."""
    from scipy import stats

    if df is not None:
        return float(stats.t.ppf(1 - 0.025 / tries, df))
    return Z if tries == 1 else float(stats.norm.ppf(1 - 0.025 / tries))


def paired_greater(a: Stat, b: Stat, a_name: str, b_name: str, measure: str, floor: float = 0.0,
                   margin: float = 0.0, tries: int = 1) -> Verdict:
    """Is `a` larger than `b`, where a.values[i] and b.values[i] share seed i (the same run measured two ways, or
    two arms on the same seeds)? Judged on the differences of the pairs, whose spread leaves out what the seeds
    share: a small but consistent gain shows where an unpaired test sees only the seeds' spread. Student's t on
    n - 1 degrees of freedom; one pair: floor decides (see Stat.se)."""
    return _paired(a, b, a_name, b_name, measure, 1.0, floor, margin, tries)


def paired_less(a: Stat, b: Stat, a_name: str, b_name: str, measure: str, floor: float = 0.0,
                margin: float = 0.0, tries: int = 1) -> Verdict:
    """Is `a` smaller than `b`, pairs sharing a seed (see paired_greater)?"""
    return _paired(a, b, a_name, b_name, measure, -1.0, floor, margin, tries)


def _paired(a: Stat, b: Stat, a_name: str, b_name: str, measure: str, sign: float, floor: float, margin: float,
            tries: int) -> Verdict:
    if a.n != b.n:
        raise ValueError(f"paired comparison of {a.n} and {b.n} values: each pair shares a seed")
    diff = Stat([x - y for x, y in zip(a.values, b.values, strict=True)])
    told = (f"{measure}: {a_name} {a.text()} vs {b_name} {b.text()}, paired by seed: difference {diff.text()}, "
            f"{sum(sign * d > margin for d in diff.values)} of {diff.n} seeds in the claimed direction")
    if margin:
        told += f" (claimed margin {margin:g})"
    if not math.isfinite(diff.mean):
        return Verdict(NOT_REPRODUCED, f"{told}; a value is not finite")
    se = diff.se(floor)
    z = critical(tries, diff.n - 1) if diff.n > 1 and diff.std > 0 else critical(tries)
    return _decide(told, diff.mean, sign, margin, se, z, tries)


def _compare(a: Stat, b: Stat, a_name: str, b_name: str, measure: str, sign: float, floor: float,
             margin: float, tries: int = 1) -> Verdict:
    told = f"{measure}: {a_name} {a.text()} vs {b_name} {b.text()}"
    if margin:
        told += f" (claimed margin {margin:g})"
    if not (math.isfinite(a.mean) and math.isfinite(b.mean)):
        return Verdict(NOT_REPRODUCED, f"{told}; a value is not finite")
    return _decide(told, a.mean - b.mean, sign, margin, math.hypot(a.se(floor), b.se(floor)), critical(tries), tries)


def _decide(told: str, diff: float, sign: float, margin: float, se: float, z: float, tries: int) -> Verdict:
    toward = sign * diff - margin  # > 0: the claimed direction
    bar = f"{z:.3g} standard errors" + (f", corrected for {tries} tries" if tries > 1 else "")
    spread = f"{bar} = {z * se:.2g}" if se > 0 else "a spread of 0 (the seeds agree exactly)"
    if toward > z * se:
        return Verdict(REPRODUCED, f"{told}; difference {diff:.3g} clears {spread}")
    if sign * diff < -z * se:
        return Verdict(NOT_REPRODUCED, f"{told}; the opposite holds here (difference {diff:.3g}, {spread})")
    return Verdict(NOT_REPRODUCED, f"{told}; the difference {diff:.3g} is within the spread ({spread}): more "
                                   "seeds or the full size may separate them")


def holds(condition: bool, reproduced: str, not_reproduced: str) -> Verdict:
    """A claim checked by a condition on measured numbers (an exact property: zero distance between units, a norm
    under its bound), with the numbers in both messages."""
    return Verdict(REPRODUCED, reproduced) if condition else Verdict(NOT_REPRODUCED, not_reproduced)


def all_of(*verdicts: Verdict) -> Verdict:
    """Reproduced when every part is; the reasons joined."""
    ok = all(v.reproduced for v in verdicts)
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, "; ".join(
        v.reason if ok or not v.reproduced else f"[holds] {v.reason}" for v in verdicts))


@dataclass
class Result:
    """What a lesson found: a table (rows of {column: text or number}), the verdict, notes that explain the numbers
    (why a claim does not reproduce at this size, what to look at in TensorBoard), and the figure it drew."""

    columns: list[str]
    rows: list[dict]
    verdict: Verdict
    notes: list[str] = field(default_factory=list)
    figure: str | None = None  # the PNG's path
    runs_figure: str | None = None  # every run's accuracy, failed runs marked (drawn by the lesson command)
    records: list[dict] = field(default_factory=list)  # every run as it ended, with its gate (the lesson command)

    def table(self) -> str:
        cells = [[_cell(r.get(c, "")) for c in self.columns] for r in self.rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
                  for i, c in enumerate(self.columns)]
        line = "| " + " | ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)) + " |"
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
        return "\n".join([line, rule, *body])


def _cell(value) -> str:
    if isinstance(value, Stat):
        return value.text()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
