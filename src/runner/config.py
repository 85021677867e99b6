"""Where the configs live, the resolvers they use, and the start-up checks of user input.

Everything here is plain Python: the checks run before torch is imported or any data is read, so a typo
costs a fraction of a second, not a data load.
"""

import os
import re
import secrets
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# One token per process: `${now:}` alone lets two jobs started in the same second share a run directory.
_PROCESS_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"


class UserError(Exception):
    """Something the user can fix: reported as one line, without a traceback."""


class ConfigError(UserError, ValueError):
    """A bad value in the user's config: the message names the key, the value, what is allowed."""


class DataError(UserError, RuntimeError):
    """Data that cannot be used as it is: the message names the file and what to do."""


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("runner_uid"):
        OmegaConf.register_new_resolver("runner_uid", lambda: _PROCESS_UID)


def _fail(key: str, value, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}. Change it with `{key}=<value>` on the command line.")


def _positive(cfg: DictConfig, key: str, integer: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        _fail(key, value, "must be a positive " + ("integer" if integer else "number"))


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate(cfg: DictConfig) -> None:
    """Check the values a user can get wrong, before anything heavy happens. Raises ConfigError."""
    _positive(cfg, "trainer.epochs", integer=True)
    _positive(cfg, "trainer.batch_size", integer=True)
    _positive(cfg, "trainer.eval_batch_size", integer=True)
    _positive(cfg, "trainer.log_every_steps", integer=True)
    _positive(cfg, "optimizer.lr")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        _fail("seed", cfg.seed, "must be an integer")
    if not isinstance(cfg.device, str) or not _DEVICE.match(cfg.device):
        _fail("device", cfg.device, "allowed: auto, cpu, cuda, cuda:N, mps")
    if cfg.trainer.progress not in ("auto", True, False):
        _fail("trainer.progress", cfg.trainer.progress, "allowed: auto, true, false")

    data = cfg.data
    total = 50_000 if data.name == "cifar10" else data.train_examples
    if data.name == "synthetic":
        _positive(cfg, "data.train_examples", integer=True)
        _positive(cfg, "data.test_examples", integer=True)
    val = data.val_size
    if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val < total:
        _fail("data.val_size", val, f"must be an integer in [0, {total}) for data={data.name} ({total} training images)")
    if data.train_size is not None:
        size = data.train_size
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= total - val:
            _fail("data.train_size", size, f"must be null or an integer in [1, {total - val}] (training images left after val_size={val})")

    augmentation = cfg.augmentation
    if not isinstance(augmentation.padding, int) or augmentation.padding < 0:
        _fail("augmentation.padding", augmentation.padding, "must be an integer >= 0")

    for name, node in cfg.regularization.items():
        if "value" in node and (not isinstance(node.value, (int, float)) or node.value < 0):
            _fail(f"regularization.{name}.value", node.value, "must be a number >= 0")
