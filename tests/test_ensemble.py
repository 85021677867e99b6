"""`python -m runner.ensemble`: each member's test accuracy is its run's own, the ensemble's NLL is no worse than
its members' mean (Jensen), unfinished runs are skipped, and members on different data are refused. A member's
config.yaml, edited as anyone who shares a run directory can, never runs code and never allocates beyond a run's
sizes: each is refused in one line."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import choices_of, compose_config
from runner.commands import ensemble
from runner.config import ConfigError
from runner.engine import recorded, train

FAST = ["model.widths=[8,16]", "data.train_examples=700", "data.test_examples=100", "trainer.epochs=1",
        "diagnostics.every_steps=0"]


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """Two seeds of one configuration, laid out like a Hydra multirun: <dir>/0, <dir>/1."""
    root = tmp_path_factory.mktemp("multirun")
    for seed in (0, 1):
        overrides = [*FAST, f"seed={seed}"]
        train.fit(compose_config(overrides), root / str(seed), choices_of(overrides))
    return root


def test_ensemble_reports_members_and_their_average(multirun, capsys):
    ensemble.main([str(multirun), "--device", "cpu"])
    result = json.loads((multirun / "ensemble.json").read_text())
    assert [m["run"] for m in result["members"]] == [str(multirun / "0"), str(multirun / "1")]
    for member in result["members"]:
        own = json.loads((multirun / member["run"].rsplit("/", 1)[-1] / "metrics.json").read_text())
        assert member["acc"] == pytest.approx(own["test_acc"])
        assert member["nll"] == pytest.approx(own["test_loss"], rel=1e-5)
    mean_nll = sum(m["nll"] for m in result["members"]) / 2
    assert result["ensemble"]["nll"] <= mean_nll + 1e-9  # -log of a mean <= mean of -log
    assert result["test_images"] == 100
    out = capsys.readouterr().out
    assert "ensemble of 2" in out and f"{result['ensemble']['acc']:.4f}" in out


def test_unfinished_runs_are_skipped_and_other_data_is_refused(multirun, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(multirun / "0", mixed / "a")
    shutil.copytree(multirun / "1", mixed / "b")
    metrics = json.loads((mixed / "b" / "metrics.json").read_text())
    (mixed / "b" / "metrics.json").write_text(json.dumps({**metrics, "status": "pruned"}))
    assert ensemble.find_runs([str(mixed)]) == [mixed / "a"]

    config = (mixed / "b" / "config.yaml").read_text()
    (mixed / "b" / "config.yaml").write_text(config.replace("test_examples: 100", "test_examples: 99"))
    with pytest.raises(ConfigError, match="other data"):
        ensemble.evaluate_ensemble([mixed / "a", mixed / "b"], "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no completed run"):
        ensemble.find_runs([str(tmp_path / "empty")])


def _edited_member(multirun, tmp_path, edit) -> Path:
    """A copy of run 0 whose config.yaml is edit(its text): what a run directory shared by someone else can hold."""
    run = tmp_path / "member"
    shutil.copytree(multirun / "0", run)
    text = (run / "config.yaml").read_text()
    edited = edit(text)
    assert edited != text
    (run / "config.yaml").write_text(edited)
    return run


_CNN = "  _target_: runner.nets.models.CNN\n  _partial_: true\n"
_WRITE = "  _target_: runner.data.checkpoint.write_text\n  text: pwned\n  path: {marker}\n"


@pytest.mark.parametrize("edit, message", [
    # the whole model mapping, _partial_: false: Hydra would call the target as the config is instantiated
    (lambda t, marker: re.sub(r"model:\n(  .*\n)+", f"model:\n{_WRITE.format(marker=marker)}  _partial_: false\n"
                                                     "  pretrained: null\n", t, count=1),
     r"model._target_=runner.data.checkpoint.write_text is none of the options of configs/model/ \(airbench, cnn,"),
    (lambda t, marker: t.replace("  _target_: torch.nn.ReLU\n  _partial_: true\n", _WRITE.format(marker=marker)),
     r"activation._target_=runner.data.checkpoint.write_text is none of the options of configs/activation/"),
    (lambda t, marker: t.replace("_target_: runner.nets.layers.BatchNorm", "_target_: runner.nets.layers.GroupNorm"),
     r"norm._target_ is not what configs/norm/batch.yaml says"),
    (lambda t, marker: t.replace(_CNN, _CNN + "  _args_: [1]\n"), r"model._args_ is not what configs/model/cnn.yaml says"),
    (lambda t, marker: t.replace("trainer:\n", f"trainer:\n{_WRITE.format(marker=marker)}"),
     r"trainer._target_ is not what its option file says"),
], ids=["model", "activation", "another target for a named option", "a Hydra key", "a group without options"])
def test_nothing_in_a_members_config_is_instantiated(multirun, tmp_path, capsys, edit, message):
    """Each member's model is rebuilt from runner's option files by the options its config.yaml records: a `_target_`
    (or any Hydra key) other than its option file's is refused in one line, and runs nothing."""
    marker = tmp_path / "written-by-the-config"
    run = _edited_member(multirun, tmp_path, lambda t: edit(t, marker))
    with pytest.raises(SystemExit) as exit_:
        ensemble.main([str(run), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert re.search(message, err) and f"leave {run} out of the ensemble" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("  widths:\n  - 8\n", "  widths:\n  - 1000000000\n"),
     r"the model has [\d,]+ parameters \(at most 200,000,000\)"),
    (lambda t: t.replace("  widths:\n  - 8\n", "  widths:\n  - 1000000\n"),
     r"a layer of the model outputs 1,024,000,000 values per image \(at most 16,777,216\)"),
    (lambda t: t.replace("convs_per_stage: 1", "convs_per_stage: 1000000"),
     r"the model's sizes ask for about 3,000,000 layers \(at most 10,000\)"),
    (lambda t: t.replace("test_examples: 100", "test_examples: 1000000000000"),
     r"data.train_examples \+ data.test_examples is 1,000,000,000,700 images \(at most 1,000,000\)"),
    (lambda t: t.replace("num_classes: 10", "num_classes: 1000000000"), r"data.num_classes is 1,000,000,000 \(at most 1,000\)"),
], ids=["parameters", "layer output", "layers", "synthetic images", "classes"])
def test_a_huge_size_in_a_members_config_is_refused_before_anything_is_allocated(multirun, tmp_path, capsys, edit,
                                                                                   message):
    """Widths of 10^9 would end in a MemoryError traceback: sizes are bounded before any build, the model's measured
    on torch's meta device (shapes without memory)."""
    run = _edited_member(multirun, tmp_path, edit)
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        ensemble.main([str(run), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert re.search(f"config.yaml: {message}, far more than any run; leave .* out of the ensemble", err), err
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("edit, message", [
    # nine aliases of nine aliases, ten levels deep: 200 bytes that unroll to 3 x 10^9 nodes
    (lambda t: "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefghij", "bcdefghijk", strict=True)),
     "it holds YAML anchors, aliases or tags"),
    (lambda t: t.replace("noise: 40.0", "noise: ${oc.env:HOME}"), r"data.noise holds an interpolation"),
    (lambda t: t + "x: " + "[" * 100_000 + "]" * 100_000 + "\n", r"it cannot be read as YAML"),
    (lambda t: t + "#" * 2**20, r"it is larger than 1,048,576 bytes"),
    (lambda t: t.replace("  widths:\n  - 8\n", "  widths:\n  - {_target_: os.system}\n"),
     r"model.widths holds a mapping inside a list"),
], ids=["aliases", "interpolation", "nesting", "size", "mapping in a list"])
def test_a_members_config_is_read_as_plain_bounded_data(multirun, tmp_path, edit, message):
    run = _edited_member(multirun, tmp_path, edit)
    with pytest.raises(ConfigError, match=f"config.yaml is not a config runner wrote: {message}") as err:
        ensemble.evaluate_ensemble([run], "cpu")
    assert "\n" not in str(err.value)


def test_a_metrics_file_nested_beyond_any_real_one_marks_the_run_unfinished(multirun, tmp_path):
    shutil.copytree(multirun / "0", tmp_path / "runs" / "a")
    shutil.copytree(multirun / "1", tmp_path / "runs" / "b")
    (tmp_path / "runs" / "b" / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    assert ensemble.find_runs([str(tmp_path / "runs")]) == [tmp_path / "runs" / "a"]


@pytest.mark.parametrize("overrides", [
    *([f"model={m}"] for m in ("cnn", "mlp", "resnet", "resnet18", "vgg", "airbench", "torchvision_resnet18")),
    *([f"optimizer={o}"] for o in ("sgd", "momentum", "nesterov", "adam", "rmsprop")),
    ["optimizer=adamw", "regularization=[weight_decay,dropout]", "norm=group", "activation=prelu", "init=he_normal"],
    # the ensembles lesson's runs at its test size
    ["data.difficulty=0.6", "model=mlp", "model.depth=2", "model.width=64", "optimizer=momentum", "optimizer.lr=0.05",
     "schedule=cosine_restarts", "schedule.snapshot_ensemble=true", "schedule.cycle_epochs=1", "trainer.epochs=3"],
], ids=lambda overrides: " ".join(overrides))
def test_a_members_config_is_rebuilt_exactly_from_the_option_files(tmp_path, overrides):
    """What a run records in config.yaml comes back as the same config, composed from configs/: the option is found
    by its name or its `_target_` and keys (optimizer=nesterov, momentum and sgd share torch.optim.SGD)."""
    from omegaconf import OmegaConf

    cfg = compose_config(overrides)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    rebuilt, largest = recorded.rebuilt_config(tmp_path, "leave it out.")
    assert OmegaConf.to_container(rebuilt, resolve=True) == OmegaConf.to_container(cfg, resolve=True)
    assert 0 < largest <= recorded.MAX_LAYER_OUTPUT


def test_a_members_recorded_download_never_makes_runner_write_elsewhere(tmp_path):
    """A shared config.yaml may name a data root and download=true: the rebuilt config reads the data where it lies
    and downloads nothing."""
    from omegaconf import OmegaConf

    cfg = compose_config(["data=cifar10", f"data.root={tmp_path / 'elsewhere'}", "data.download=true"], tiny=False)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    rebuilt, _ = recorded.rebuilt_config(tmp_path, "leave it out.")
    assert rebuilt.data.download is False and rebuilt.data.root == str(tmp_path / "elsewhere")
