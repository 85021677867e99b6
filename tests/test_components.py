"""The components' hooks are declared (runner.engine.hooks): a method that is no hook is refused when its class is
defined, the loop asks only for declared hooks and calls only the overridden ones, and every component a run
builds conforms."""

from types import SimpleNamespace

import pytest
import torch

from conftest import choices_of, compose_config
from runner.engine import build, train
from runner.engine.components import SweepReport
from runner.engine.hooks import HOOKS, STATE, Component, bound
from runner.engine.run import Run


def test_a_misspelled_hook_is_refused_when_its_class_is_defined():
    """A gradient-noise regularizer whose `after_backwards` was never called ran to `completed` doing nothing."""
    with pytest.raises(TypeError) as err:
        class GradientNoise(Component):
            def after_backwards(self, run):
                pass
    message = str(err.value)
    assert "GradientNoise.after_backwards" in message and "after_backward?" in message
    assert "helpers start with _" in message


def test_helpers_start_with_an_underscore_and_constants_are_no_methods():
    class Helped(Component):
        name = "helped"
        LIMIT = 3.0

        def after_step(self, run, x, outputs, y):
            self._count()

        def _count(self):
            pass

        @staticmethod
        def _static():
            pass

    with pytest.raises(TypeError, match="Static.scale is not a component hook .*helpers start with _"):
        class Static(Component):
            @staticmethod
            def scale():
                pass
    assert Helped.LIMIT == 3.0


def test_a_component_with_state_or_a_summary_needs_a_name():
    """Its state would be saved under no key (so never), its summary written under ""."""
    for hook in ("state_dict", "summary"):
        with pytest.raises(TypeError, match="no `name`"):
            type("Nameless", (Component,), {hook: lambda self: {}})


def test_run_hooks_refuses_an_undeclared_name():
    """On main Run.hooks("after_backwards") found nothing and the loop went on."""
    run = SimpleNamespace(components=[])
    with pytest.raises(ValueError, match="'after_backwards' is not a component hook.*after_backward"):
        Run.hooks(run, "after_backwards")
    assert Run.hooks(run, "after_backward") == []


def test_only_overridden_hooks_are_called_and_a_hook_set_on_the_instance_counts():
    class Clip(Component):
        def after_backward(self, run):
            pass

    clip, plain, late = Clip(), Component(), Component()
    late.finish = lambda run: None
    components = [plain, clip, late]
    assert [h.__self__ for h in bound(components, "after_backward")] == [clip]
    assert bound(components, "finish") == [late.finish]
    assert all(bound([plain], hook) == [] for hook in HOOKS)


def test_an_extra_component_that_is_no_component_is_refused(tmp_path):
    class DuckTyped:
        name = ""

        def after_step(self, run, x, outputs, y):
            pass

    overrides = ["trainer.epochs=1"]
    with pytest.raises(TypeError, match="extra components must subclass runner.engine.hooks.Component: DuckTyped"):
        train.fit(compose_config(overrides), tmp_path, choices_of(overrides), [DuckTyped()])


class _Stop(Exception):
    pass


class _Built(Component):
    """Keeps the components the run built, then stops it before its first step."""

    def __init__(self):
        self.components = []

    def start(self, run):
        self.components = list(run.components)
        raise _Stop


def _engine_components() -> set[type]:
    """Every component class of the engine (runner.engine.*)."""
    found, todo = set(), [Component]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("runner.engine."):
                found.add(sub)
    return found


def test_every_component_a_run_builds_conforms(tmp_path):
    """Between them the two configs ask for every component of the engine (early stopping and pruning exclude each
    other); each is a Component whose public methods are all declared hooks, named where it has state."""
    small = ["model=airbench", "model.widths=[8,16,16]", "data.train_examples=300", "data.val_size=100",
             "data.test_examples=100", "diagnostics.every_steps=0"]
    pretrained = tmp_path / "pretrained.pt"
    torch.save({"model": build.build_model(compose_config(small), 10).state_dict(), "epoch": 1}, pretrained)
    everything = [*small, "init=dirac", "init.first_layer=whiten", "init.whiten_images=200",
                  "init.first_layer_bias_epochs=1", "prune=magnitude", "prune.fine_tune_epochs=1",
                  "averaging=ema", "diagnostics.every_steps=1", "regularization=[grad_clip]", "schedule=cyclic",
                  "norm.reestimate_batches=2", "evaluation.sharpness_samples=1", "export.enabled=true",
                  "transfer=linear_probe", f"model.pretrained={pretrained}"]
    built = []
    for i, overrides in enumerate([everything, [*small, "regularization=[early_stopping]"]]):
        probe = _Built()
        with pytest.raises(_Stop):
            train.fit(compose_config(overrides), tmp_path / str(i), choices_of(overrides),
                      [SweepReport(lambda epoch, entry: None), probe])
        built += probe.components
    assert _engine_components() <= {type(c) for c in built}
    allowed = set(HOOKS) | set(STATE)
    for c in built:
        assert isinstance(c, Component)
        public = {a for a in dir(type(c)) if not a.startswith("_") and callable(getattr(type(c), a))}
        assert public <= allowed, (type(c).__name__, public - allowed)
        overridden = {h for h in ("state_dict", "summary") if getattr(type(c), h) is not getattr(Component, h)}
        assert c.name or not overridden, type(c).__name__


def test_a_component_declares_the_tags_and_metrics_it_writes(monkeypatch):
    """The tracker refuses an undeclared tag and finish an undeclared metrics.json key; a component from outside
    runner's table declares its own in `declares`, when its class is defined."""
    from runner.engine import records

    # the declarations last this test only: the tables are copies, the patterns are put back after it
    for table in ("TAGS", "METRICS", "_known_tags"):
        monkeypatch.setattr(records, table, getattr(records, table).copy())
    for pattern in ("_TAG", "_METRIC"):
        monkeypatch.setattr(records, pattern, getattr(records, pattern))
    with pytest.raises(KeyError):
        records.check_tag("train/declared_noise")

    class DeclaredNoise(Component):
        name = "declared_noise"
        declares = {"train/declared_noise": "the noise's std", "declared_noise": "steps given noise"}

        def summary(self):
            return {"steps": 1}

    records.check_tag("train/declared_noise")
    records.check_metrics({"declared_noise": {"steps": 1}, "status": "completed"})
    with pytest.raises(KeyError):
        records.check_metrics({"undeclared_noise": 1})
    assert DeclaredNoise.declares["declared_noise"] == records.METRICS["declared_noise"]
