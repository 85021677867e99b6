"""`validate`, the start-up check of a composed config (each key against runner.config.schema, then the rules
that tie keys together, runner.config.rules), and the resolvers the configs use. Also the names users import from
here: where the configs live (runner.config.keys) and the errors a user can fix (runner.config.errors). The modules
this file imports take those names from the leaves, never from here, so that no import comes back to this file.

Everything here is plain Python: the checks run before torch is imported or any data is read, so a typo
costs a fraction of a second, not a data load.
"""

import os
import secrets

from omegaconf import DictConfig, OmegaConf

from runner.config import rules, schema
from runner.config.errors import CheckpointError, ConfigError, DataError, UserError
from runner.config.keys import CONFIG_DIR, PAD_MODES

# The names users import from runner.config; each is defined in the leaf module named above.
__all__ = ["CONFIG_DIR", "PAD_MODES", "CheckpointError", "ConfigError", "DataError", "UserError", "register_resolvers",
           "validate"]

# One token per process: `${now:}` alone lets two jobs started in the same second share a run directory.
_PROCESS_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("runner_uid"):
        OmegaConf.register_new_resolver("runner_uid", lambda: _PROCESS_UID)


def validate(cfg: DictConfig) -> None:
    """Complete `cfg` in place with the schema's defaults for keys its options leave out (so that config.yaml
    records every value a run uses; optimizer.lr=auto becomes the number chosen for the network, runner.config.lr),
    then check every key and the rules between keys. Raises ConfigError."""
    schema.complete_and_check(cfg)
    rules.check(cfg)
