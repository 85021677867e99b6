"""The config's schema and rules (runner.config): every key checked from one table, NaN refused, unknown keys and
options answered with a did-you-mean, the absent keys completed, the regularizer table true to its files, and an
error leaving no empty run directory."""

import copy
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.config.keys import REQUIRED, Key
from runner.config.regularizers import DROPOUTS, REGULARIZERS, chosen
from runner.config.schema import SCHEMA, check_choices
from runner.job import remove_if_empty


def _refused(overrides, tiny=True):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides, tiny=tiny, checked=False))
    return str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Single keys, from the schema

@pytest.mark.parametrize("override", [
    "data.noise=-1", "data.split_seed=-1", "data.num_classes=0", "data.generator_seed=-3", "seed=-1",
    "trainer.save_best=maybe", "trainer.deterministic=1", "trainer.resume=", "trainer.progress=1",
])
def test_keys_that_were_never_checked_are_refused(override):
    key, value = override.split("=", 1)
    assert _refused([override]).startswith(f"{key}=") and "is invalid" in _refused([override])


@pytest.mark.parametrize("overrides", [
    ["data=cifar10", "data.root=5"], ["data=cifar10", "data.cache_dir=[a]"], ["data=cifar10", "data.download=sometimes"],
    ["data=cifar10", "data.num_classes=5"],
])
def test_cifar10_keys_are_checked(overrides):
    assert _refused(overrides, tiny=False).startswith(overrides[1].split("=")[0])


@pytest.mark.parametrize("folder", ["cifar-10-batches-py", "my_cifar_copy"])
def test_a_data_root_pointing_at_the_cifar_folder_itself_names_its_parent(tmp_path, folder):
    """On main data.root=<dir>/cifar-10-batches-py found no CIFAR-10 inside it and tried to download into it. The
    folder is known by its name, or by the batches.meta file only it holds."""
    root = tmp_path / folder
    root.mkdir()
    if folder != "cifar-10-batches-py":
        (root / "batches.meta").write_bytes(b"")
    message = _refused(["data=cifar10", f"data.root={root}"], tiny=False)
    assert message.startswith(f"data.root='{root}' is invalid: that is the 'cifar-10-batches-py' folder itself")
    assert f"data.root={tmp_path}" in message and "\n" not in message
    assert compose_config(["data=cifar10", f"data.root={tmp_path}"], tiny=False).data.root == str(tmp_path)


@pytest.mark.parametrize("overrides", [
    ["activation=elu", "activation.alpha=big"], ["activation=gelu", "activation.approximate=exact"],
    ["activation=prelu", "activation.num_parameters=0"], ["activation=leaky_relu", "activation.negative_slope=nan"],
    ["model=airbench", "model.stem_width=0"], ["model=airbench", "model.head_scale=-1"],
    ["model=vgg", "model.fc_widths=[0]"], ["model=vgg", "model.stages=[[8],[0]]"],
])
def test_every_model_and_activation_key_is_checked(overrides):
    assert _refused(overrides).startswith(overrides[1].split("=")[0].split("[")[0])


@pytest.mark.parametrize("override", ["optimizer.lr=nan", "optimizer.lr=inf", "optimizer.lr=-inf",
                                      "regularization.l2.value=nan", "schedule.warmup_epochs=nan",
                                      "schedule.pct_start=nan"])
def test_nan_and_inf_are_refused_where_a_finite_number_is_needed(override):
    assert _refused([override]).startswith(override)


def test_the_message_says_the_range_in_words():
    assert "must be a positive number" in _refused(["optimizer.lr=nan"])
    assert "must be an integer >= 0" in _refused(["data.split_seed=-1"])
    assert "must be a number in [0, 1)" in _refused(["optimizer.momentum=1"])
    assert "allowed: true, false" in _refused(["trainer.save_best=maybe"])


# ---------------------------------------------------------------------------------------------------------------
# Unknown keys

@pytest.mark.parametrize("override, suggestion", [
    ("+trainer.epoch=3", "did you mean trainer.epochs?"),
    ("+optimizer.momentun=0.9", "did you mean optimizer.momentum?"),
    ("+regularization.dropot.p=0.1", "did you mean regularization.dropout"),
    ("+epochs=3", "the keys of the config: seed, device, trainer"),
])
def test_an_unknown_key_added_with_plus_is_refused_with_a_did_you_mean(override, suggestion):
    message = _refused([override])
    assert message.startswith(f"{override[1:].split('=')[0].rsplit('.p', 1)[0]} is not a config key: ")
    assert suggestion in message and "\n" not in message


def test_hydra_keys_are_allowed_in_every_group():
    for group in ("optimizer", "schedule", "norm", "augmentation"):
        validate(compose_config([f"+{group}._convert_=all"], checked=False))


# ---------------------------------------------------------------------------------------------------------------
# Completion: the group defaults a run records

def test_validate_fills_in_the_group_defaults_an_option_leaves_out():
    cfg = compose_config(["augmentation=flip", "init=he_normal"], checked=False)
    assert "padding" not in cfg.augmentation
    validate(cfg)
    assert (cfg.augmentation.padding, cfg.augmentation.pad_mode, cfg.augmentation.cutout_pixels) == (0, "zeros", 0)
    assert (cfg.init.first_layer, cfg.init.first_layer_bias_epochs, cfg.schedule.snapshot_ensemble) == (
        "same", None, False)
    assert "padding: 0" in OmegaConf.to_yaml(cfg)  # what config.yaml records


def test_completion_keeps_the_options_own_values_and_is_idempotent():
    cfg = compose_config(["augmentation=alternating_flip"])
    assert (cfg.augmentation.padding, cfg.augmentation.flip, cfg.augmentation.pad_mode) == (2, "alternate", "reflect")
    before = OmegaConf.to_container(cfg)
    validate(cfg)
    assert OmegaConf.to_container(cfg) == before


def test_a_required_key_removed_is_refused():
    assert _refused(["~trainer.epochs"]).startswith("trainer.epochs is missing")


_GROUPS = [g for g in SCHEMA if isinstance(SCHEMA[g], dict) and g != "regularization"]


def _option_files(group):
    return sorted((CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", _GROUPS)
def test_the_schema_knows_every_key_of_every_option_and_requires_only_keys_all_of_them_set(group):
    root = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text()).get(group) or {}
    for path in _option_files(group) or [None]:
        keys = {**root, **(yaml.safe_load(path.read_text()) if path else {})}
        assert {k for k in keys if not k.startswith("_")} <= set(SCHEMA[group]), path
        required = {k for k, rule in SCHEMA[group].items() if isinstance(rule, Key) and rule.default is REQUIRED}
        assert required <= set(keys), path


# ---------------------------------------------------------------------------------------------------------------
# The regularizer table

def test_the_regularizer_table_is_the_regularization_folder_with_its_keys():
    files = {p.stem: yaml.safe_load(p.read_text()) or {} for p in _option_files("regularization")}
    assert set(REGULARIZERS) == set(files) - {"none"} and files["none"] == {}
    for name, regularizer in REGULARIZERS.items():
        assert set(files[name]) == {name} and set(files[name][name]) == set(regularizer.keys), name
        assert regularizer.what and regularizer.acts and regularizer.kind


def test_the_dropout_kinds_come_from_the_table():
    assert DROPOUTS == ("dropout", "gaussian_dropout", "alpha_dropout", "uout")
    cfg = compose_config(["regularization=[l2,alpha_dropout,dropconnect]", "evaluation.mc_dropout_passes=2"])
    assert chosen(cfg.regularization, "dropout") == ["alpha_dropout"]
    assert "kinds of dropout" in _refused(["regularization=[dropout,alpha_dropout]"])


# ---------------------------------------------------------------------------------------------------------------
# Unknown options on the command line, before Hydra

@pytest.mark.parametrize("args", [
    ["optimizer=adam"], ["optimizer=adam,sgd"], ["optimizer=choice(adam,sgd)"], ["+experiment=fast"],
    ["regularization=[l2,dropout]"], ["regularization=[l2],[l2,dropout]"], ["regularization=[]"], ["~averaging"],
    ["hydra/launcher=joblib"], ["hydra/sweeper/sampler=random"], ["optimizer@other=adam"], ["optimizer=glob(*)"],
    ["experiment/init_study=relu_he"], ["optimizer.lr=0.1"], ["--cfg", "job"], ["-m", "seed=0,1"],
    ["--config-dir=/elsewhere", "optimizer=mine"],
])
def test_option_choices_that_exist_pass(args):
    check_choices(args)


@pytest.mark.parametrize("arg, message", [
    ("optimizer=adma", "optimizer=adma is not an option: did you mean "),
    ("optimizer=adam,sgdd", "optimizer=sgdd is not an option: did you mean sgd?"),
    ("optimizer=choice(adam,sgdd)", "optimizer=sgdd is not an option"),
    ("+experiment=fsat", "experiment=fsat is not an option: did you mean fast?"),
    ("regularization=[l2,dropot]", "regularization=dropot is not an option: did you mean dropout"),
    ("~averaging=emma", "averaging=emma is not an option: did you mean ema?"),
])
def test_an_unknown_option_is_one_line_with_a_did_you_mean(arg, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")) as err:
        check_choices([arg])
    assert "allowed: " in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# No empty run directory after an error

def _hydra_record(run_dir: Path) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run_dir / ".hydra" / name).write_text("{}\n")
    (run_dir / "runner.log").write_text("")
    return run_dir


def test_a_run_directory_holding_only_hydras_record_is_removed_with_its_empty_date_folder(tmp_path):
    run = _hydra_record(tmp_path / "outputs" / "2024-01-02" / "10-00-00-abc")
    remove_if_empty(run)
    assert not (tmp_path / "outputs" / "2024-01-02").exists() and (tmp_path / "outputs").is_dir()


def test_a_run_directory_holding_anything_else_stays(tmp_path):
    run = _hydra_record(tmp_path / "outputs" / "2024-01-02" / "10-00-00-abc")
    other = _hydra_record(tmp_path / "outputs" / "2024-01-02" / "10-00-01-def")
    (run / "checkpoints").mkdir()
    (other / ".hydra" / "notes.txt").write_text("mine")
    remove_if_empty(run)
    remove_if_empty(other)
    assert (run / "checkpoints").is_dir() and (other / ".hydra" / "notes.txt").is_file()


def test_the_working_directory_is_never_removed(tmp_path, monkeypatch):
    run = _hydra_record(tmp_path / "here")
    monkeypatch.chdir(run)
    remove_if_empty(run)
    remove_if_empty(tmp_path)
    assert (run / "runner.log").is_file()


def test_the_config_check_imports_no_torch():
    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import compose_config; "
            "compose_config(['+experiment=fast']); import runner.config.schema, runner.config.rules, "
            "runner.config.regularizers; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1],
                   env={**os.environ, "PYTHONPATH": ""})


@pytest.mark.parametrize("overrides, message", [
    (["regularization=[early_stopping]"], "regularization.early_stopping.metric='val_acc' is invalid"),
    (["schedule=plateau"], "schedule.metric='val_acc' is invalid"),
    (["regularization=[label_smoothing]"], "never reads"),
    (["evaluation.tta_flip=true"], "evaluation.tta_flip=True"),
])
def test_the_autoencoder_refuses_options_that_need_labels_or_accuracy(overrides, message):
    """On main the autoencoder's own loop silently ignored these."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config(["objective=autoencoder", *overrides], checked=False))


# ---------------------------------------------------------------------------------------------------------------
# Keys per option: the keys of the chosen option's file, the group's own keys and runner's record, nothing else

@pytest.mark.parametrize("overrides, option, having", [
    (["optimizer=adam", "+optimizer.momentum=0.9"], "optimizer=adam", "choose an optimizer that has it (momentum, "
                                                                      "nesterov)"),
    (["optimizer=sgd", "+optimizer.momentum=0.9"], "optimizer=sgd", "(momentum, nesterov)"),
    (["optimizer=nadam", "+optimizer.bias_correction=false"], "optimizer=nadam", "(adam, adamw)"),
    (["activation=relu", "+activation.negative_slope=0.1"], "activation=relu", "choose an activation that has it "
                                                                              "(leaky_relu)"),
    (["prune=none", "+prune.sparsity=0.5"], "prune=none", "choose a prune that has it (magnitude)"),
    (["transfer=none", "+transfer.lr_mult=0.1"], "transfer=none", "(finetune, freeze_until, gradual_unfreeze)"),
    (["model=mlp", "+model.widths=[8]"], "model=mlp", "(airbench, cnn, resnet, resnet18)"),
    (["model=resnet", "+model.pool=avg"], "model=resnet", "(cnn, vgg)"),
    (["+data.download=false"], "data=synthetic", "(cifar10)"),
    (["init=default", "+init.bias=0.1"], "init=default", "(constant, dirac, he_normal"),
    (["norm=layer", "+norm.groups=4"], "norm=layer", "(group)"),
    (["schedule=onecycle", "+schedule.gamma=0.5"], "schedule=onecycle", "(multistep, step)"),
    (["augmentation=crop_flip", "+augmentation.contrast=0.2"], "augmentation=crop_flip", "(crop_flip_jitter)"),
    (["averaging=none", "+averaging.decay=0.9"], "averaging=none", "(ema, lookahead)"),
    (["preprocess=standardize", "+preprocess.components=10"], "preprocess=standardize", "(pca)"),
    (["objective=classify", "+objective.decoder_width=64"], "objective=classify", "(autoencoder)"),
])
def test_a_key_of_another_option_is_refused_naming_the_options_that_have_it(overrides, option, having):
    """On main a key of any option of the group passed, then failed inside torch or was never read."""
    key = overrides[-1].lstrip("+").split("=")[0]
    message = _refused(overrides)
    assert message.startswith(f"{key} is not a key of {option} (") and having in message, message
    assert "remove it or choose" in message and "\n" not in message


def test_a_key_refused_lists_the_options_own_keys():
    message = _refused(["optimizer=adam", "+optimizer.momentum=0.9"])
    assert "(its keys: lr, betas, eps, impl, bias_correction" in message


@pytest.mark.parametrize("overrides", [
    ["init=he_normal", "+init.first_layer=whiten", "+init.whiten_epsilon=5e-4", "+init.whiten_images=100"],
    ["augmentation=none", "+augmentation.flip=true", "+augmentation.padding=2"],
    ["schedule=cosine", "+schedule.snapshot_ensemble=true"],
    ["optimizer=adam", "optimizer.lr=auto", "+optimizer.auto_lr={batch:0.01,other:0.001}"],
    ["optimizer=momentum", "optimizer.lr=0.1"],
    ["+experiment=fast"],
])
def test_keys_the_schema_gives_every_option_of_a_group_pass_with_any_option(overrides):
    validate(compose_config(overrides, checked=False))


def test_a_key_of_a_regularizer_not_chosen_says_how_to_choose_it():
    message = _refused(["regularization=[l2]", "+regularization.dropout.p=0.5"])
    assert message.startswith("regularization.dropout") and "regularization=[l2,dropout]" in message, message
    assert "\n" not in message


def test_the_reference_rule_of_an_optimizer_without_one_is_refused_at_start_up():
    """On main it passed the check, loaded the data and failed building the optimizer."""
    message = _refused(["optimizer=sgd", "optimizer._target_=torch.optim.ASGD", "optimizer.impl=reference"])
    assert message.startswith("optimizer.impl=reference") and "ASGD" in message and "optimizer.impl=torch" in message
    assert "SGD, " in message and "\n" not in message  # the rules runner has


_OPTION_GROUPS = [g for g in SCHEMA if (CONFIG_DIR / g).is_dir()]
# What the rules between keys ask of an option at its defaults (transfer needs weights, pruning fine-tunes within
# trainer.epochs, stochastic depth a residual net, AdamW its decoupled decay, freeze_until a layer).
_COMPANIONS = {
    ("transfer", "finetune"): ["model.pretrained=."], ("transfer", "gradual_unfreeze"): ["model.pretrained=."],
    ("transfer", "linear_probe"): ["model.pretrained=."],
    ("transfer", "freeze_until"): ["model.pretrained=.", "transfer.freeze_until=features.0"],
    ("prune", "magnitude"): ["trainer.epochs=3"], ("regularization", "stochastic_depth"): ["model=resnet"],
    ("optimizer", "adamw"): ["regularization=weight_decay"],
}


@functools.cache
def _default_config():
    return compose_config(tiny=False, checked=False)


def _with_option(cfg, group, option):
    """cfg holding `group=option` as Hydra composes it: the option file, config.yaml's keys for the group over it."""
    node = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
    if group == "regularization":
        cfg.regularization = node
    else:
        root = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text()).get(group) or {}
        cfg[group] = OmegaConf.merge(node, root)


@pytest.mark.parametrize("group, option", [(g, p.stem) for g in _OPTION_GROUPS for p in _option_files(g)])
def test_every_option_of_every_group_passes_the_check_at_its_defaults(group, option):
    cfg = copy.deepcopy(_default_config())
    _with_option(cfg, group, option)
    for override in _COMPANIONS.get((group, option), []):
        key, value = override.split("=")
        if "." in key:
            OmegaConf.update(cfg, key, yaml.safe_load(value))
        else:
            _with_option(cfg, key, value)
    validate(cfg)


def test_every_key_an_option_accepts_reaches_its_target_or_is_runners():
    """An accepted key is an argument of the option's `_target_` or one runner reads itself (RUNNER_KEYS, marked in
    the schema), and no argument of a target is among RUNNER_KEYS (build.option would drop it)."""
    import inspect

    from hydra.utils import get_object

    from runner.config.option_keys import accepted_keys
    from runner.config.schema import RUNNER_KEYS

    for group in _OPTION_GROUPS:
        for path in _option_files(group):
            target = yaml.safe_load(path.read_text()).get("_target_")
            if group in ("regularization", "data") or target is None:
                continue
            params = inspect.signature(get_object(target)).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            for key in accepted_keys(group, path.stem, SCHEMA[group]):
                assert takes_any or (key in params) != (key in RUNNER_KEYS), (group, path.stem, key)
