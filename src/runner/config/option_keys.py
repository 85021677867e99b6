"""The keys of each option: a group's option takes the keys its file configs/<group>/<option>.yaml sets, those the
schema gives every option of the group (required keys, keys with a default, keys marked any_option), those
config.yaml sets for the group, and Hydra's `_` keys. Any other key of the group, valid for another option, would
fail inside torch or never be read: runner.config.schema refuses it in one line that names the options having it.

Which option a config holds is read from the config itself (a run's config.yaml records no choices): its `name`
where the group names its options, else the option file with its `_target_` whose keys the config holds, the most
specific first (optimizer=nesterov over momentum over sgd, all torch.optim.SGD).

Plain Python: the checks run before torch is imported."""

import difflib
import functools

import yaml

from runner.config.keys import CONFIG_DIR, OPTIONAL, Key, option_names


@functools.cache
def file_keys(group: str, option: str) -> dict:
    """What configs/<group>/<option>.yaml sets: {key: value}."""
    return yaml.safe_load((CONFIG_DIR / group / f"{option}.yaml").read_text()) or {}


@functools.cache
def _root_keys(group: str) -> tuple[str, ...]:
    """The keys config.yaml sets for the group beside its option (model.pretrained)."""
    root = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text()).get(group)
    return tuple(root) if isinstance(root, dict) else ()


def has_options(group: str, spec) -> bool:
    """Whether `group` is a folder of option files with keys (optimizer, not trainer; regularization is a list of
    them, checked by its own table)."""
    return type(spec) is dict and group.isidentifier() and (CONFIG_DIR / group).is_dir()


def option_of(group: str, node, spec: dict) -> str | None:
    """The option of `group` the config node `node` was composed from; None where no option file matches (a
    `_target_` of the user's own)."""
    names = option_names(group)
    if "name" in spec:
        return node.get("name") if node.get("name") in names else None
    same = [n for n in names if file_keys(group, n).get("_target_") == node.get("_target_")]
    held = [n for n in same if set(file_keys(group, n)) <= set(node)] or same

    def fit(name):  # the most keys, then the most values in common: model=resnet18 over resnet at its widths
        keys = file_keys(group, name)
        return len(set(keys) & set(node)), sum(k in node and node.get(k) == v for k, v in keys.items())

    return max(held, key=fit, default=None)


def accepted_keys(group: str, option: str, spec: dict) -> list[str]:
    """The keys (`_` keys left out) that `group=option` takes: its file's, the group's own, config.yaml's."""
    keys = [k for k in file_keys(group, option) if not k.startswith("_")]
    everyone = [k for k, rule in spec.items() if isinstance(rule, Key) and not k.startswith("_") and (
        rule.default is not OPTIONAL or rule.any_option)]
    return list(dict.fromkeys([*keys, *_root_keys(group), *everyone]))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def not_a_key(group: str, option: str, key: str, spec: dict) -> str:
    """The one line for `group.key`, a key of other options of the group than `option`."""
    having = [n for n in option_names(group) if key in accepted_keys(group, n, spec)]
    choose = f"choose {_article(group)} {group} that has it ({', '.join(having)})" if having else \
        f"no option of configs/{group}/ has it"
    keys = [k for k in accepted_keys(group, option, spec) if k != "name"]  # the name is the word after `group=`
    has = f"its keys: {', '.join(keys)}" if keys else "it has no keys"
    return f"{group}.{key} is not a key of {group}={option} ({has}); remove it or {choose}."


def unknown(key: str, path: str, *candidates: list[str]) -> str:
    """The one line for `key`, a key nothing at `path` ("optimizer." for a group, "" for the root) has: the close
    matches among the first list of candidates that has any (the chosen option's keys, then the group's)."""
    for names in candidates:
        close = difflib.get_close_matches(key[len(path):], names, n=3, cutoff=0.7)
        if close:
            return (f"{key} is not a config key: did you mean {' or '.join(path + k for k in close)}? Remove or "
                    "correct the override that adds it.")
    return (f"{key} is not a config key: the keys of {path[:-1] or 'the config'}: {', '.join(candidates[-1])}. "
            "Remove or correct the override that adds it.")
