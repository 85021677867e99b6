"""`python -m runner` and the `runner` console script: compose the config with Hydra, then run one job."""

import sys

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


def cli() -> None:
    """The command line: a `group=option` that names no option file is one line, before Hydra composes (and makes
    a run directory); under torchrun, every rank then uses rank 0's run directory."""
    try:
        check_choices(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = agree_on_run_dir(sys.argv)
    main()


if __name__ == "__main__":
    cli()
