"""The option reference of the documentation: every option file of configs/, every key it sets, with the key's type,
allowed values, default and description, rendered as markdown from the files, their comments and the schema
(runner.config.schema, runner.config.regularizers), so that it cannot drift from what runs. The docs site renders it
at build time; `python -m runner.config.reference` prints it.

Plain Python: no torch."""

import functools
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.config import CONFIG_DIR
from runner.config.keys import OPTIONAL, REQUIRED, Key, show
from runner.config.regularizers import REGULARIZERS
from runner.config.schema import SCHEMA

# The groups of a run, in the order config.yaml chooses them; presets and sweeps are added with `+`.
RUN_GROUPS = ("data", "model", "activation", "init", "norm", "optimizer", "schedule", "regularization",
              "augmentation", "preprocess", "averaging", "transfer", "objective", "prune")
# Top-level keys of config.yaml that are not a group's option: the run-wide keys.
RUN_WIDE = ("seed", "device", "trainer", "evaluation", "export", "diagnostics")
# The configs of the other commands (configs/<name>.yaml), with the command that reads each.
COMMANDS = {"lr_find": "python -m runner.lr_find", "pictures": "python -m runner.pictures",
            "transfer_grid": "python -m runner.transfer_grid"}
_BLOCK_SCALAR = (">", ">-", ">+", "|", "|-", "|+")
_KEY_LINE = re.compile(r"^(\s*)([^\s#:\-][^:#]*?):(?:\s+(.*?))?\s*$")


_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", type(None): "null"}


class _Nothing:
    """A value no key allows: a Key's problem with it is the key's allowed values in words."""


# ---------------------------------------------------------------- reading an option file

def comments(text: str) -> tuple[str, dict[str, str]]:
    """(the file's opening comment, its lines kept, {dotted key: the comment block right above it plus its inline
    comment}). The `@package` line is left out of the opening comment."""
    lines = text.splitlines()
    opening, start = [], 0
    while start < len(lines) and lines[start].startswith("#"):
        words = re.sub(r"^# ?", "", lines[start]).rstrip()
        if not words.startswith("@package"):
            opening.append(words)
        start += 1
    about, stack, pending, block = {}, [], [], None
    for line in lines[start:]:
        indent = len(line) - len(line.lstrip())
        if block is not None and (not line.strip() or indent > block):
            continue  # the lines of a multi-line string
        block, stripped = None, line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        found = _KEY_LINE.match(line)
        if not found:
            pending = []  # a blank line, a list item, a continued flow list: a comment above ends here
            continue
        stack = [(depth, key) for depth, key in stack if depth < indent]
        value, _, inline = (found[3] or "").partition(" #")
        path = ".".join([*(key for _, key in stack), found[2].strip()])
        about[path] = " ".join([*pending, inline.strip()]).strip()
        stack.append((indent, found[2].strip()))
        pending, block = [], indent if value.strip() in _BLOCK_SCALAR else None
    return "\n".join(opening), about


def load(path: Path) -> dict:
    """The file's keys and values as OmegaConf reads them (1e-12 is a number), interpolations left as written."""
    node = OmegaConf.load(path)
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else {}


def leaves(node, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of every leaf of a YAML mapping (a list is a leaf)."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(leaves(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def option_files(folder: str) -> list[tuple[str, Path]]:
    """(option name, file) of every option under configs/<folder>, nested ones as `init_study/relu_he`."""
    root = CONFIG_DIR / folder
    return [(str(p.relative_to(root).with_suffix("")), p) for p in sorted(root.rglob("*.yaml"))]


# ---------------------------------------------------------------- one key

def value_text(value) -> str:
    """A value as it is written in a file or on the command line."""
    if isinstance(value, list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return show(value)


def allowed(rule: Key) -> tuple[str, str]:
    """(type, allowed values) of a schema key, in the words its error message uses."""
    words = (rule.problem(_Nothing()) or "").removeprefix("must be ")
    plain = words.removeprefix("null or ")
    nullable = " or null" if plain != words else ""
    if plain.startswith("allowed: "):
        values = plain.removeprefix("allowed: ")
        return ("boolean" if values == "true, false" else "one of") + nullable, values
    found = re.match(r"(?:a|an) (?:positive )?(integer|number)\b", plain)
    kind = found[1] if found else "list" if plain.startswith("a list") else "value"
    return kind + nullable, words


def default_text(value) -> str:
    if value is REQUIRED:
        return "set by each option"
    return "unset" if value is OPTIONAL else value_text(value)


def cell(text: str) -> str:
    """`text` for a table cell: `|` and line breaks escaped, `<` and `*` and `_` taken literally outside code."""
    parts = str(text).replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([*_\\\[\]])", r"\\\1", parts[i]).replace("<", "&lt;")
    return "`".join(parts).replace("|", "\\|")


def prose(text: str) -> list[str]:
    """An opening comment as markdown: its lines of prose as a paragraph, its indented lines (commands, aligned
    tables) as a block of text as written."""
    out, words, kept = [], [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("  ") and line.strip():
            if words:
                out += [cell(" ".join(words)), ""]
                words = []
            kept.append(line)
            continue
        if kept:
            out += ["```text", *kept, "```", ""]
            kept = []
        if line.strip():
            words.append(line.strip())
    if words:
        out += [cell(" ".join(words)), ""]
    return out or ["-", ""]


def code(text) -> str:
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header),
            *(f"| {' | '.join(row)} |" for row in rows), ""]


# ---------------------------------------------------------------- the run's groups

@functools.cache
def _described(group: str) -> dict[tuple[str, str], str]:
    """{(key, value): the first comment an option file of `group` gives the key set to that value}: an option that
    sets a key to the same value without a comment shares the words another option gives it."""
    found = {}
    for _, path in option_files(group):
        values = leaves(load(path))
        for key, words in comments(path.read_text())[1].items():
            if words and key in values:
                found.setdefault((key.rpartition(".")[2], value_text(values[key])), words)
    return found


def _key_row(name: str, rule: Key | None, value, about: str) -> list[str]:
    kind, values = allowed(rule) if rule is not None else ("value", "")
    if rule is not None and rule.runner and not about:
        about = f"read by runner: {rule.runner}"
    return [code(name), kind, cell(values) or "-", code(default_text(value)), cell(about) or "-"]


def _shared_keys(group: str, spec: dict, root: dict, shared_about: dict[str, str]) -> list[str]:
    """The keys that every option of `group` takes without its file setting them: the schema's defaults, the keys
    config.yaml sets beside the option, the keys any option takes."""
    rows = []
    for key, rule in spec.items():
        if key.startswith("_") or key == "name" or not isinstance(rule, Key):
            continue
        if key in root or (rule.default not in (OPTIONAL, REQUIRED)) or rule.any_option:
            value = root.get(key, rule.default)
            words = shared_about.get(f"{group}.{key}") or _described(group).get((key, value_text(value)), "")
            rows.append(_key_row(key, rule, value, words))
    if not rows:
        return []
    return ["Keys every option of the group takes (besides those its file sets):", "",
            *table(["key", "type", "allowed", "default", "description"], rows)]


def _option(group: str, name: str, path: Path, spec: dict, shared: dict) -> list[str]:
    opening, about = comments(path.read_text())
    values = load(path)
    lines = [f"#### {code(f'{group}={name}')}", "", *prose(opening)]
    if group == "regularization" and name in REGULARIZERS:
        spec, values, about = REGULARIZERS[name].keys, values.get(name) or {}, {
            k.partition(".")[2]: v for k, v in about.items()}
        lines += [f"What it is: {cell(REGULARIZERS[name].what)}; where it acts: "
                  f"{cell(', '.join(REGULARIZERS[name].acts))}.", ""]
    if "_target_" in values:
        partial = " (given the run's values at build time)" if values.get("_partial_") else ""
        lines += [f"Builds {code(values['_target_'])}{partial}.", ""]
    keys = [k for k in values if not str(k).startswith("_") and k != "name"]
    if group == "regularization":  # the regularizer's node, and the keys the schema gives a default
        keys += [k for k in spec if k not in keys and isinstance(spec[k], Key)]
    rows = []
    for k in keys:
        value = values.get(k, spec[k].default if k in spec else OPTIONAL)
        rows.append(_key_row(k, spec.get(k), value, about.get(k) or shared.get((k, value_text(value)), "")))
    return lines + (table(["key", "type", "allowed", "default", "description"], rows) if rows else
                    ["It sets no keys of its own.", ""])


def run_groups(root_config: dict, root_about: dict[str, str]) -> list[str]:
    defaults = {}
    for entry in root_config.get("defaults", []):
        if isinstance(entry, dict):
            defaults.update({k: v for k, v in entry.items() if not k.startswith("override")})
    lines = ["## The groups of a run", "",
             "Choose an option with `group=option` on the command line (`regularization` takes a list: "
             "`regularization=[l2,dropout]`); change any of its keys with `group.key=value`.", ""]
    for group in RUN_GROUPS:
        names = [n for n, _ in option_files(group)]
        default = defaults.get(group)
        default = value_text(default) if default is not None else "-"
        lines += [f"### {code(group + '=')}", "",
                  f"Options: {', '.join(code(n) for n in names)}. Default: {code(default)}.", ""]
        spec = SCHEMA[group]
        root = root_config.get(group) if isinstance(root_config.get(group), dict) else {}
        if group != "regularization":
            lines += _shared_keys(group, spec, root, root_about)
        shared = _described(group)
        for name, path in option_files(group):
            lines += _option(group, name, path, spec, shared)
    return lines


def run_wide(root_config: dict, root_about: dict[str, str]) -> list[str]:
    lines = ["## Run-wide keys", "", f"Set in {code('configs/config.yaml')}; every one is an override "
             "(`trainer.epochs=5`).", ""]
    flat = leaves(root_config)
    for top in RUN_WIDE:
        spec = SCHEMA[top]
        pairs = [(top, spec)] if isinstance(spec, Key) else [(f"{top}.{k}", r) for k, r in spec.items()]
        rows = [_key_row(key, rule, flat.get(key, rule.default), root_about.get(key, "")) for key, rule in pairs]
        intro = root_about.get(top, "") if not isinstance(spec, Key) else ""
        heading = code(top if isinstance(spec, Key) else top + ".*")
        lines += [f"### {heading}", "", *([cell(intro), ""] if intro else []),
                  *table(["key", "type", "allowed", "default", "description"], rows)]
    return lines


# ---------------------------------------------------------------- presets, sweeps, the sweeper, lessons, commands

def _chosen(values: dict) -> str:
    picks = []
    for entry in values.get("defaults") or []:
        if isinstance(entry, dict):
            picks += [f"{k.removeprefix('override ').lstrip('/')}={value_text(v)}" for k, v in entry.items()]
    return ", ".join(code(p) for p in picks)


def setting_section(path: Path, heading: str, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """An option file that sets keys of other configs (a preset, a sweep, a lesson, a command's config): its
    description, the options it chooses and each key it sets, with its value and comment."""
    opening, about = comments(path.read_text())
    values = load(path)
    lines = [heading, "", *prose(opening)]
    if _chosen(values):
        lines += [f"Chooses {_chosen(values)}.", ""]
    rows, told = [], set()
    for key, value in leaves({k: v for k, v in values.items() if k != "defaults" and k not in skip}).items():
        parent = key.rpartition(".")[0]
        words = about.get(key) or ("" if parent in told else about.get(parent, ""))  # a block's comment, once
        told.add(parent)
        rows.append([code(prefix + key), _TYPES.get(type(value), "value"), code(value_text(value)),
                     cell(words) or "-"])
    return lines + (table(["key", "type", "value", "description"], rows) if rows else [])


def sweeper() -> list[str]:
    lines = ["## The sweeper", "", "Every multirun goes through runner's Optuna sweeper; its keys are "
             "`hydra.sweeper.<key>`, its sampler and pruner are options "
             "(`hydra/sweeper/sampler=tpe`, `hydra/sweeper/pruner=median`).", ""]
    lines += setting_section(CONFIG_DIR / "hydra" / "sweeper" / "optuna.yaml", f"### {code('hydra/sweeper=optuna')}",
                             "hydra.sweeper.")
    for kind in ("sampler", "pruner"):
        for name, path in option_files(f"hydra/sweeper/{kind}"):
            lines += setting_section(path, f"#### {code(f'hydra/sweeper/{kind}={name}')}",
                                     f"hydra.sweeper.{kind}.")
    return lines


def presets_and_sweeps() -> list[str]:
    lines = ["## Presets", "", "A preset sets keys of the run config and chooses options; add it with "
             "`+experiment=<option>`.", ""]
    for name, path in option_files("experiment"):
        lines += setting_section(path, f"#### {code(f'+experiment={name}')}")
    lines += ["## Sweeps", "", "A sweep declares a search space and a sampler: `python -m runner -m +sweep=<option>` "
              "(the `-m` is implied where the file sets `hydra.mode: MULTIRUN`).", ""]
    for name, path in option_files("sweep"):
        lines += setting_section(path, f"#### {code(f'+sweep={name}')}")
    return lines


def lessons(link: str) -> list[str]:
    lines = ["## Lessons", "", "Each is `python -m runner.lesson <name>`; its own keys change with `key=value`, "
             "runner overrides go after `--`.", ""]
    for name, path in option_files("lesson"):
        lines += setting_section(path, f"#### {code(f'lesson={name}')}")
        if link:
            lines += [f"Its latest measurement: [{name}]({link.format(name=name)}).", ""]
    return lines


def commands() -> list[str]:
    lines = ["## The other commands' configs", ""]
    for name, command in COMMANDS.items():
        lines += setting_section(CONFIG_DIR / f"{name}.yaml", f"#### {code(f'{name}.yaml')}", skip=("hydra",))
        lines += [f"Read by {code(command)}; each key is an override there.", ""]
    return lines


def markdown(lesson_link: str = "") -> str:
    """The whole reference. lesson_link: where a lesson's page is, e.g. "lessons/{name}.md" (empty: no link)."""
    text = (CONFIG_DIR / "config.yaml").read_text()
    root_config, root_about = load(CONFIG_DIR / "config.yaml"), comments(text)[1]
    lines = [*run_wide(root_config, root_about), *run_groups(root_config, root_about), *presets_and_sweeps(),
             *sweeper(), *lessons(lesson_link), *commands()]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
