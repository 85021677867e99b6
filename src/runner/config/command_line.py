"""The command line of `python -m runner`, checked before Hydra composes it for the run, so that a mistake is one
line and nothing is written: each `group=option` names an option file (schema.check_choices), the overrides compose
(a key set without `+` exists, one added with `+` does not yet, one removed with `~` does), and a single run's config
passes runner.config.validate. Hydra's composition errors ("Key 'x' is not in struct", "Could not append to config",
"Could not delete from config") are said in runner's words: the key, whether the chosen option has it, whether `+`
is needed, the close matches. `composed` does the same for any caller that composes (the sweeper, the lessons).

Plain Python and Hydra: no torch."""

import difflib
import re
from collections.abc import Callable

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.config import CONFIG_DIR, ConfigError, option_keys, validate
from runner.config.keys import option_names
from runner.config.regularizers import REGULARIZERS
from runner.config.schema import SCHEMA, check_choices

_ERRORS = (HydraException, OmegaConfBaseException)
# Hydra's words for an override that does not fit the config, and what the override did.
_FAILED = [(re.compile(r"Could not override '([^'@]+)'\."), "set"),
           (re.compile(r"An item is already at '([^']+)'\."), "add"),
           (re.compile(r"Could not delete from config\. '([^']+)' does not exist\."), "remove"),
           (re.compile(r"Multiple values for ([\w/]+)\."), "choose")]
# Hydra's flags runner's check understands; with any other (--config-dir, --info, ...) the line is Hydra's to check.
_WITH_VALUE, _ALONE = ("--cfg", "-c", "--package", "-p"), ("-m", "--multirun", "--resolve", "--run", "-r")


def check_command_line(args: list[str], config: str = "config", own: tuple[str, ...] = ()) -> None:
    """Raises ConfigError for the first mistake of `python -m runner ARGS`, before Hydra makes a run directory.
    config: the primary config file of the command (lr_find for `python -m runner.lr_find`); own: its top-level
    keys that are the command's own, checked by the command (the rest is a run's config, checked as one)."""
    check_choices(args)
    overrides, flags, words = [], set(), iter(args)
    for arg in words:
        flag = arg.split("=", 1)[0]
        if flag in _WITH_VALUE:
            flags.add(flag)
            if "=" not in arg:
                next(words, None)
        elif arg in _ALONE:
            flags.add(arg)
        elif arg.startswith(("-", "hydra.searchpath")):  # configs from elsewhere: Hydra's to check
            return
        else:
            overrides.append(arg)
    shown = bool(flags & {"--cfg", "-c"})  # --cfg prints the config and runs nothing
    multirun = bool(flags & {"-m", "--multirun"})
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        # As Hydra does: a multirun's first config leaves the sweeps out (the sweeper checks each of their values).
        cfg = composed(lambda o: hydra.compose_config(config, o, run_mode=RunMode.MULTIRUN,
                                                      validate_sweep_overrides=False), overrides)
        if multirun or cfg.hydra.mode == RunMode.MULTIRUN:
            return
        cfg = composed(lambda o: hydra.compose_config(config, o, run_mode=RunMode.RUN), overrides)
    if not shown:
        validate(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in own]) if own else cfg)


def composed(compose: Callable[[list[str]], DictConfig], overrides: list[str]) -> DictConfig:
    """compose(overrides), a config with its `hydra` node, or the ConfigError that says in one line what is wrong
    with the override Hydra refused."""
    try:
        return compose(overrides)
    except _ERRORS as err:
        raise ConfigError(explain(err, compose, overrides)) from err


def explain(err: Exception, compose, overrides: list[str]) -> str:
    """Hydra's refusal `err` of `overrides` in one line: for an override of a key, said against the config composed
    without the overrides Hydra refuses; otherwise Hydra's own words, on one line."""
    if isinstance(err, OverrideParseException):
        return _unreadable(err, overrides)
    failed = _failed(err, overrides)
    if failed is None:
        return _one_line(str(err))
    override, kind = failed
    rest = [o for o in overrides if o != override]
    for _ in range(len(overrides)):
        try:
            base = compose(rest)
            break
        except _ERRORS as other:
            refused = _failed(other, rest)
            if refused is None:
                return _one_line(str(err))
            rest.remove(refused[0])
    else:
        return _one_line(str(err))
    return _said(base, override, kind)


def _failed(err: Exception, overrides: list[str]) -> tuple[str, str] | None:
    """The override Hydra refused in `err`, and what it did (set, add, remove); None for another refusal."""
    for pattern, kind in _FAILED:
        found = pattern.search(str(err))
        for override in overrides if found else []:
            if _key(override) == found[1]:
                return override, kind
    return None


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _unreadable(err: Exception, overrides: list[str]) -> str:
    """The first override Hydra's grammar cannot read, with its words."""
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as bad:
            return f"`{override}` cannot be read: {_one_line(str(bad))} (quote a value holding , [ ] or spaces)."
    return _one_line(str(err))


def _one_line(text: str) -> str:
    text = text.split("\nConfig search path:")[0].split("\nSee https://")[0]
    return " ".join(text.replace("\n\t", ", ").split())


def _said(cfg: DictConfig, override: str, kind: str) -> str:
    """What is wrong with `override` (kind: set, add, remove) in `cfg`, the config composed without it."""
    key = _key(override)
    group, _, rest = key.partition(".")
    option = cfg.hydra.runtime.choices.get(group)
    if kind == "choose":
        return f"{group} is already chosen ({group}={option}): drop the `+`, `{override.lstrip('+')}`."
    if kind == "add":
        sets = option in option_names(group) and rest in option_keys.file_keys(group, option)
        owner = f"{group}={option} sets it" if sets else "it has a value"
        return f"{key} is already in the config ({owner}): drop the `+`, `{override.lstrip('+')}`."
    absent = _absent(cfg, key)
    if absent is not None:
        return absent
    if kind == "remove":
        return f"{key} is not in the config: `{override}` removes nothing; drop it."
    # a key the chosen option takes, but its file does not set: Hydra adds it only with `+`
    return f"{key} is not in the file of {group}={option}: add it with a `+`, `+{override}`."


def _absent(cfg: DictConfig, key: str) -> str | None:
    """Why `key` is not in `cfg`, unless it is a key the chosen option takes without setting it (None)."""
    parts = key.split(".")
    head, spec = parts[0], SCHEMA.get(parts[0])
    if head not in cfg:
        names = list(dict.fromkeys([*cfg.keys(), *(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())]))
        close = difflib.get_close_matches(head, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "`python -m runner --help` lists them."
        return f"{head} is not a config group or key: {hint} Remove or correct the override."
    if len(parts) == 2 and option_keys.has_options(head, spec):
        option = cfg.hydra.runtime.choices.get(head) or option_keys.option_of(head, cfg[head], spec)
        accepted = option_keys.accepted_keys(head, option, spec)
        if parts[1] in accepted:
            return None
        if parts[1] in spec:
            return option_keys.not_a_key(head, option, parts[1], spec)
        return option_keys.unknown(key, f"{head}.", accepted, list(spec))
    if head == "regularization" and len(parts) > 2 and parts[1] not in cfg.regularization:
        if parts[1] in REGULARIZERS:
            chosen = ",".join([*cfg.regularization, parts[1]])
            return f"regularization.{parts[1]} is not chosen: choose it with `regularization=[{chosen}]`, then set " \
                   "its keys."
        return option_keys.unknown(f"regularization.{parts[1]}", "regularization.", list(REGULARIZERS))
    node, path = cfg, []
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, DictConfig) else None
        if not isinstance(child, DictConfig):
            if child is not None:
                where = ".".join([*path, part])
                return f"{key}: {where} is a value, not a group of keys; set it with `{where}=<value>`."
            break
        node, path = child, [*path, part]
    keys = [k for k in node if not str(k).startswith("_")]  # Hydra's _target_ is no key a user sets
    return option_keys.unknown(".".join([*path, parts[len(path)]]), "".join(f"{p}." for p in path), keys)
