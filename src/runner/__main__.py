"""`python -m runner` and the `runner` console script: compose the config with Hydra, then run one job."""

import hydra
from omegaconf import DictConfig

from runner.config import CONFIG_DIR, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from runner.job import run_job  # deferred: torch is imported only once a job really runs

    return run_job(cfg)


if __name__ == "__main__":
    main()
