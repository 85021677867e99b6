"""`python -m runner` and the `runner` console script: compose the config with Hydra, then run one job."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from runner.config import CONFIG_DIR, ConfigError, register_resolvers
from runner.config.schema import check_choices
from runner.engine.distributed import agree_on_run_dir

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from runner.job import run_job  # deferred: torch is imported only once a job really runs

    return run_job(cfg)


def check_run_dir(args: list[str]) -> None:
    """An explicit hydra.run.dir= must be a folder this process can make (Hydra's own failure there is a traceback
    or two lines that say nothing of what to do)."""
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    if not given or "${" in given[-1] or any(a in ("-m", "--multirun") or a.startswith("--cfg") for a in args):
        return
    path = Path(given[-1])
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".runner-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"hydra.run.dir={given[-1]} cannot be used: {err.strerror or err} ({err.filename or path}). "
                          "Give a folder you can write to, e.g. hydra.run.dir=outputs/<name>.") from None


def cli() -> None:
    """The command line: a `group=option` that names no option file is one line, before Hydra composes (and makes
    a run directory); under torchrun, every rank then uses rank 0's run directory."""
    try:
        check_choices(sys.argv[1:])
        check_run_dir(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = agree_on_run_dir(sys.argv)
    main()


if __name__ == "__main__":
    cli()
