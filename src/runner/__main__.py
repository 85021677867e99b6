"""`python -m runner` and the `runner` console script: compose the config with Hydra, then run one job."""

import sys

import hydra
from omegaconf import DictConfig

from runner.config import CONFIG_DIR, register_resolvers
from runner.engine.distributed import agree_on_run_dir

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from runner.engine.job import run_job  # deferred: torch is imported only once a job really runs

    return run_job(cfg)


def cli() -> None:
    """The command line: under torchrun, first make every rank use rank 0's run directory."""
    sys.argv = agree_on_run_dir(sys.argv)
    main()


if __name__ == "__main__":
    cli()
