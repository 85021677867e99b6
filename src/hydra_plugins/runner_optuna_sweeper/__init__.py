"""runner's Hydra sweeper plugin (`hydra/sweeper=optuna`, configs/hydra/sweeper/): grid, random and Bayesian search
with Optuna, in a study kept in the sweep directory. Hydra finds it by scanning the `hydra_plugins` namespace."""
