"""The kinds of value a config key can hold, as `Key`s: what a value may be, said in words for the error message,
and what an option file that lacks the key gets. The schema (runner.config.schema) is written with these.

Plain Python: the checks run before torch is imported."""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

# Where the option files live: configs/<group>/<option>.yaml (the folder of a group is its registry).
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


class _Absent:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


# A key's default when no value is given: OPTIONAL, only some options of the group have the key (checked where
# present, absent elsewhere); REQUIRED, every config has it (an error when removed).
OPTIONAL, REQUIRED = _Absent("OPTIONAL"), _Absent("REQUIRED")

# The validation metrics a technique can watch (schedule=plateau, regularization=early_stopping).
VAL_METRICS = {"val_acc": "higher is better", "val_loss": "lower is better"}

# The borders a padded image can have (augmentation.pad_mode, evaluation.tta_pad_mode; augment.pad draws them).
PAD_MODES = {"zeros": "a black border", "reflect": "the image mirrored at its edge"}


@dataclass(frozen=True)
class Key:
    """One config key. problem(value): what is wrong with the value, as "must be ..." (None: nothing). item: the
    Key of each element, for a list. default: filled in where the config lacks the key, or OPTIONAL / REQUIRED.
    any_option: an OPTIONAL key that every option of the group takes (not only those whose file sets it).
    runner: where runner reads the key itself; empty for an argument of the option's `_target_`."""

    problem: Callable[[object], str | None]
    item: "Key | None" = None
    default: object = OPTIONAL
    any_option: bool = False
    runner: str = ""


def required(**keys: Key) -> dict[str, Key]:
    """Keys every option of the group sets."""
    return {name: replace(key, default=REQUIRED) for name, key in keys.items()}


def any_option(**keys: Key) -> dict[str, Key]:
    """Keys that no option file needs to set and every option of the group takes (given with a `+`)."""
    return {name: replace(key, any_option=True) for name, key in keys.items()}


def runners(where: str, key: Key) -> Key:
    """A key runner reads itself (`where` says where), left out of the arguments of the option's `_target_`."""
    return replace(key, runner=where)


def show(value) -> str:
    """A value as it is typed on the command line (true, null)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return f"{value:g}" if is_number(value) else str(value)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])$")


def number(interval: str = "(-inf, inf)", *, integer: bool = False, null: bool = False, why: str = "",
           default=OPTIONAL) -> Key:
    """A number (an integer with integer=True) in `interval`, written as in maths: "[0, 1)", "(0, inf)"."""
    open_low, low, high, open_high = _INTERVAL.match(interval).groups()
    low, high, open_low, open_high = float(low), float(high), open_low == "(", open_high == ")"
    kind, article = ("integer", "an") if integer else ("number", "a")
    if low == 0 and open_low and high == math.inf:
        words = f"a positive {kind}"
    elif high == math.inf:
        words = f"{article} {kind}" + ("" if low == -math.inf else f" {'>' if open_low else '>='} {show(low)}")
    else:
        words = f"{article} {kind} in {interval}"
    words = f"must be {'null or ' if null else ''}{words}{f' ({why})' if why else ''}"

    def problem(value):
        if value is None and null:
            return None
        if not (is_int(value) if integer else is_number(value)):
            return words
        # Written as "inside the interval", never as "not outside": NaN fails every comparison, so it is refused.
        inside = (low < value if open_low else low <= value) and (value < high if open_high else value <= high)
        return None if inside else words

    return Key(problem, default=default)


def integer(interval: str = "(-inf, inf)", **kw) -> Key:
    return number(interval, integer=True, **kw)


def one_of(*values, default=OPTIONAL) -> Key:
    """One of `values`, or of a dict's keys (its values say what each means: "fan_in (keeps the variance)").
    Compared with their type: 1 is not true."""
    meaning = values[0] if len(values) == 1 and isinstance(values[0], dict) else dict.fromkeys(values, "")
    words = "allowed: " + ", ".join(f"{show(v)} ({m})" if m else show(v) for v, m in meaning.items())
    return Key(lambda value: None if any(value == v and type(value) is type(v) for v in meaning) else words,
               default=default)


def boolean(default=OPTIONAL) -> Key:
    return one_of(True, False, default=default)


def options(group: str) -> Key:
    """The name of an option of `group`: a file configs/<group>/<name>.yaml (the folder is the registry)."""
    return Key(lambda value: None if value in option_names(group) else f"allowed: {', '.join(option_names(group))}",
               runner="the option's name, as its file is named (config checks, logs)")


def option_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def text(pattern: str = r".+", message: str = "must be a non-empty string", null: bool = False) -> Key:
    """A string matching `pattern` (re.fullmatch); `message` says what is allowed."""
    return Key(lambda value: None if (value is None and null) or (
        isinstance(value, str) and re.fullmatch(pattern, value)) else message)


def list_of(item: Key, what: str, length: tuple[int, float] = (1, math.inf), ascending: bool = False,
            null: bool = False) -> Key:
    """A list of `length` (min, max) elements, each checked by `item`; ascending: sorted, low to high.
    what: the whole list in words, e.g. "a list of two numbers in [0, 1), e.g. [0.9,0.999]"."""

    def problem(value):
        if value is None and null:
            return None
        ok = OmegaConf.is_list(value) and length[0] <= len(value) <= length[1] and (
            not ascending or (all(item.problem(v) is None for v in value) and list(value) == sorted(value)))
        return None if ok else f"must be {what}"

    return Key(problem, item=item)


def either(first: Key, second: Key, message: str) -> Key:
    """A value that `first` or `second` allows; `message` says what is allowed."""
    return Key(lambda value: None if first.problem(value) is None or second.problem(value) is None else message)
