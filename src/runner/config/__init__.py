"""Where the configs live, the resolvers they use, the errors a user can fix, and `validate`, the start-up check
of a composed config: each key against runner.config.schema, then the rules that tie keys together
(runner.config.rules).

Everything here is plain Python: the checks run before torch is imported or any data is read, so a typo
costs a fraction of a second, not a data load.
"""

import os
import secrets
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"

# The borders a padded image can have (augmentation.pad_mode, evaluation.tta_pad_mode; augment.pad draws them).
PAD_MODES = {"zeros": "a black border", "reflect": "the image mirrored at its edge"}

# One token per process: `${now:}` alone lets two jobs started in the same second share a run directory.
_PROCESS_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"


class UserError(Exception):
    """Something the user can fix: reported as one line, without a traceback."""


class ConfigError(UserError, ValueError):
    """A bad value in the user's config: the message names the key, the value, what is allowed."""


class DataError(UserError, RuntimeError):
    """Data that cannot be used as it is: the message names the file and what to do."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used (missing, damaged, hostile, not a checkpoint, not the kind needed): the
    message names the file, what is wrong and what to do."""


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("runner_uid"):
        OmegaConf.register_new_resolver("runner_uid", lambda: _PROCESS_UID)


# Imported last: the schema and the rules use the error classes above.
from runner.config import rules, schema  # noqa: E402


def validate(cfg: DictConfig) -> None:
    """Complete `cfg` in place with the schema's defaults for keys its options leave out (so that config.yaml
    records every value a run uses; optimizer.lr=auto becomes the number chosen for the network, runner.config.lr),
    then check every key and the rules between keys. Raises ConfigError."""
    schema.complete_and_check(cfg)
    rules.check(cfg)
