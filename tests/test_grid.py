"""The option grid at runner's defaults (runner.grid): with no optimizer, lr or batch size given, the combinations
the lectures consider trainable train; and optimizer.lr=auto (runner.config.lr) picks the lr by the network."""

import pytest

from conftest import compose_config
from runner.commands import grid
from runner.config import ConfigError

# What the defaults must train on a small synthetic task in 2 epochs: the two combinations that diverged under a
# default tuned for the batch-norm CNN alone, and one of each other family.
CHEAP = ["mlp selu lecun_normal alpha_dropout (self-normalizing)", "cnn prelu orthogonal norm=group",
         "mlp relu he_normal norm=none", "cnn elu he_uniform norm=none", "cnn relu default norm=layer",
         "mlp tanh xavier_normal norm=batch"]
SMALL = ["data=synthetic", "data.train_examples=2000", "data.test_examples=500", "data.val_size=200",
         "device=cpu", "trainer.progress=false", "diagnostics.every_steps=0", "trainer.save_best=false"]


def _rows(names):
    rows = {name: (name, overrides, cheap) for name, overrides, cheap in grid.combinations()}
    return [rows[n] for n in names]


def test_the_grid_is_the_lectures_trainable_combinations():
    rows = grid.combinations()
    assert len(rows) >= 30 and len({name for name, _, _ in rows}) == len(rows)
    words = " ".join(" ".join(o) for _, o, _ in rows)
    for option in ("norm=none", "norm=group", "norm=layer", "norm=batch", "activation=selu", "activation=maxout",
                   "model=resnet", "model=vgg", "regularization=[alpha_dropout]", "regularization=[grad_clip]"):
        assert option in words
    # the lectures' untrainable settings are left out on purpose
    assert "init=constant" not in words and "init=zeros" not in words
    # a grid row never names the recipe: the defaults choose it
    assert not any(w.startswith(("optimizer", "schedule", "trainer.")) for _, o, _ in rows for w in o)


@pytest.mark.parametrize("name", CHEAP)
def test_the_defaults_train_every_family(tmp_path, name):
    (row,) = _rows([name])
    result = grid.run_grid([row], SMALL, 2, tmp_path, echo=lambda line: None)[0]
    assert result["status"] == "completed", result
    assert result["test_acc"] >= 0.2, result  # twice chance


def test_auto_lr_follows_the_network():
    batch = compose_config(["optimizer=nesterov", "norm=batch"], tiny=False)
    assert batch.optimizer.lr == batch.optimizer.auto_lr.batch and batch.optimizer.lr_auto == "batch"
    for overrides in (["norm=none"], ["norm=group"], ["norm=layer", "model=mlp"],
                      ["optimizer=momentum", "norm=none"]):
        cfg = compose_config(overrides, tiny=False)
        assert cfg.optimizer.lr == cfg.optimizer.auto_lr.other < cfg.optimizer.auto_lr.batch, overrides
    # a number always wins, and options without a table keep their own lr
    assert compose_config(["norm=none", "optimizer.lr=0.3"], tiny=False).optimizer.lr == 0.3
    adam = compose_config(["optimizer=adam", "norm=none"], tiny=False)
    assert adam.optimizer.lr == 0.001 and "lr_auto" not in adam.optimizer
    with pytest.raises(ConfigError, match="optimizer.lr=auto needs the option's auto_lr table"):
        compose_config(["optimizer=adam", "optimizer.lr=auto"], tiny=False)
    with pytest.raises(ConfigError, match="optimizer.auto_lr"):
        compose_config(["optimizer.auto_lr.other=-1"], tiny=False)


def test_auto_lr_is_logged_and_recorded(tmp_path, caplog):
    import logging

    from runner.engine.build import build_model, build_optimizer

    cfg = compose_config(["model=mlp", "model.depth=1", "model.width=8", "norm=none"])
    with caplog.at_level(logging.INFO, logger="runner"):
        optimizer = build_optimizer(cfg, build_model(cfg, 10))
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.auto_lr.other
    assert "optimizer.lr=auto" in caplog.text and "without batch norm" in caplog.text
