"""The loop's regularizers: gradient clipping against torch's, the sparsity measure, label smoothing's loss, early
stopping (unit, and end to end: it stops, restores the best weights, and a re-run trains no further), each loop
regularizer's component named in the regularizer table, and a new loop regularizer that is its option file and its
component only."""

import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from conftest import TINY, choices_of, compose_config, run_cli
from runner.config import ConfigError, validate
from runner.config.regularizers import LOOP, REGULARIZERS, in_loop
from runner.data import checkpoint
from runner.engine import train
from runner.engine.build import build_objective, build_optimizer
from runner.engine.components import EarlyStopping
from runner.engine.hooks import Component, End
from runner.optimization import regularizers as regularize

MINE = ["l1", "elastic_net", "label_smoothing", "grad_clip", "early_stopping", "l2", "weight_decay"]
# 500 training images (5 steps of 100), 200 validation, 100 test images, a narrow net: seconds per run.
FAST = ["model.widths=[8,16]", "data.train_examples=700", "data.test_examples=100", "diagnostics.every_steps=0"]


@pytest.mark.parametrize("name", MINE)
def test_every_loop_regularizer_option_composes_validates_and_builds(name):
    cfg = compose_config([f"regularization=[{name}]"])
    validate(cfg)
    node = cfg.regularization[name]
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2))
    decay = optimizer.param_groups[0]
    expected = {"l1": ("l1_proximal", node.get("value")), "l2": ("weight_decay", node.get("value")),
                "weight_decay": ("decoupled_decay", node.get("value")),
                "elastic_net": ("weight_decay", node.get("l2"))}
    if name in expected:
        key, value = expected[name]
        assert decay[key] == value
    assert build_objective(cfg).loss_fn.label_smoothing == (node.value if name == "label_smoothing" else 0.0)


def _with_grads(seed=0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    for p in params:
        p.grad = 5 * torch.randn_like(p)
    return params


def test_clip_by_norm_matches_torch_and_returns_the_norm_before_clipping():
    ours, theirs = _with_grads(), _with_grads()
    norm = regularize.clip_gradients(ours, "norm", 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert torch.allclose(norm, expected) and norm > 1.0
    assert all(torch.allclose(a.grad, b.grad) for a, b in zip(ours, theirs, strict=True))
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours])) == pytest.approx(1.0, rel=1e-5)


def test_clip_by_value_clamps_each_entry():
    params = _with_grads()
    before = [p.grad.clone() for p in params]
    regularize.clip_gradients(params, "value", 0.5)
    for p, g in zip(params, before, strict=True):
        assert torch.equal(p.grad, g.clamp(-0.5, 0.5))


def test_sparsity_counts_exact_and_near_zeros():
    w = [torch.tensor([0.0, 0.0, 1e-4, 0.5]), torch.tensor([[-2e-4, 0.0], [3.0, -1.0]])]
    s = regularize.sparsity(w)
    assert s["weights/zero_fraction"] == pytest.approx(3 / 8)
    assert s["weights/near_zero_fraction"] == pytest.approx(5 / 8)


def test_label_smoothing_loss_is_cross_entropy_against_the_smoothed_target():
    cfg = compose_config(["regularization=[label_smoothing]", "regularization.label_smoothing.value=0.2"])
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    target = torch.full((6, 10), 0.2 / 10).scatter_(1, y[:, None], 0.8 + 0.2 / 10)
    expected = -(target * logits.log_softmax(1)).sum(1).mean()
    assert build_objective(cfg).loss(logits, None, y) == pytest.approx(expected.item(), rel=1e-6)


def test_early_stopping_counts_patience_and_keeps_the_best_weights():
    model = torch.nn.Linear(2, 1)
    run = SimpleNamespace(model=model, world=SimpleNamespace(main=True), save_last=lambda: None)
    stopper = EarlyStopping("val_loss", patience_epochs=2, min_delta=0.01)
    ends = []
    for epoch, loss in enumerate([1.0, 0.8, 0.795, 0.9]):  # 0.795 is not better by more than min_delta
        with torch.no_grad():
            model.weight.fill_(epoch + 1)
        ends.append(stopper.epoch_end(run, epoch, {"loss": loss, "acc": 0.5}))
    assert ends[:3] == [None, None, None] and ends[3] == End("completed", "")
    assert (stopper.best, stopper.best_epoch, stopper.stopped) == (0.8, 2, True)
    stopper.finish(run)
    assert torch.all(model.weight == 2)


def test_the_loop_regularizers_are_built_from_their_table_entry_with_their_keys():
    """A regularizer acting in the loop names its component in REGULARIZERS; the component takes exactly its keys."""
    for name, regularizer in REGULARIZERS.items():
        assert bool(regularizer.component) == (LOOP in regularizer.acts), name
        if regularizer.component:
            cls = get_class(regularizer.component)
            assert issubclass(cls, Component)
            assert set(inspect.signature(cls).parameters) == set(regularizer.keys), name
    cfg = compose_config(["regularization=[early_stopping,l2,grad_clip]"])
    assert [name for name, _ in in_loop(cfg.regularization)] == ["grad_clip", "early_stopping"]  # the table's order


def _scripted_val(monkeypatch, accs):
    """Make the objective's validation report the accuracies `accs` in turn (test evaluations stay real)."""
    from runner.engine.objectives import Classify

    real, calls = Classify.evaluate, iter(accs)

    def fake(self, model, preprocess, x, y, batch_size):
        result = real(self, model, preprocess, x, y, batch_size)
        return {**result, "acc": next(calls)} if len(x) == 200 else result  # 200: the tiny val split

    monkeypatch.setattr(Classify, "evaluate", fake)


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_early_stopping_stops_restores_the_best_weights_and_stays_stopped(tmp_path, monkeypatch):
    overrides = [*FAST, "trainer.epochs=5", "regularization=[early_stopping]",
                 "regularization.early_stopping.patience_epochs=2"]
    _scripted_val(monkeypatch, [0.3, 0.5, 0.45, 0.4, 0.9])
    metrics = train.fit(compose_config(overrides), tmp_path, choices_of(overrides))
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 4  # 2 epochs without a gain
    assert metrics["early_stopping"] == {"best": 0.5, "best_epoch": 2, "bad_epochs": 2, "stopped": True}
    best = checkpoint.load(tmp_path / train.BEST)  # the weights of epoch 2
    final = checkpoint.load(tmp_path / train.LAST)
    assert best["epoch"] == 2 and final["epoch"] == 4
    assert all(torch.equal(best["model"][k], final["model"][k]) for k in best["model"])

    again = train.fit(compose_config(overrides), tmp_path, choices_of(overrides))
    assert again["epochs_completed"] == 4 and again["test_acc"] == metrics["test_acc"]
    assert json.loads((tmp_path / "metrics.json").read_text())["early_stopping"]["stopped"] is True


@pytest.mark.parametrize("overrides, key", [
    (["regularization=[grad_clip]", "regularization.grad_clip.by=sum"], "regularization.grad_clip.by"),
    (["regularization=[grad_clip]", "regularization.grad_clip.threshold=0"], "regularization.grad_clip.threshold"),
    (["regularization=[label_smoothing]", "regularization.label_smoothing.value=1.0"],
     "regularization.label_smoothing.value"),
    (["regularization=[early_stopping]", "regularization.early_stopping.metric=acc"],
     "regularization.early_stopping.metric"),
    (["regularization=[early_stopping]", "regularization.early_stopping.patience_epochs=0"],
     "regularization.early_stopping.patience_epochs"),
    (["regularization=[elastic_net]", "regularization.elastic_net.l1=-1"], "regularization.elastic_net.l1"),
    (["regularization=[l1]", "regularization.l1.proximal=maybe"], "regularization.l1.proximal"),
    (["optimizer=adamw", "regularization=[elastic_net]"], "optimizer=adamw"),
])
def test_bad_regularizer_settings_are_refused_at_start_up(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(overrides, checked=False))


def test_empty_regularization_list_is_a_valid_run_config():
    cfg = compose_config(["regularization=[]"])
    validate(cfg)
    assert OmegaConf.to_container(cfg.regularization) == {}


# A regularizer that acts in the loop, added as a user would: its option file and its component (and this test),
# nothing else of runner edited. Gradient noise (Neelakantan et al. 2015) stands for any such technique.
NOISE_OPTION = """\
# Gaussian noise of standard deviation std added to every gradient before the optimizer's step.
gradient_noise:
  _target_: runner.engine.gradient_noise.GradientNoise
  std: 0.01
"""
NOISE_COMPONENT = '''\
"""regularization=gradient_noise: Gaussian noise on every gradient between backward and the step."""

import torch

from runner.engine.hooks import Component


class GradientNoise(Component):
    name = "gradient_noise"
    declares = {"gradient_noise": "the steps given noise and its std", "train/gradient_noise": "the noise's std"}

    def __init__(self, std: float):
        self.std, self.steps = std, 0

    def after_backward(self, run) -> None:
        for p in run.model.parameters():
            if p.grad is not None:
                p.grad.add_(torch.randn_like(p.grad), alpha=self.std)
        self.steps += 1

    def after_log(self, run, window) -> None:
        run.tracker.scalar("train/gradient_noise", self.std, run.state.step)

    def summary(self) -> dict:
        return {"steps": self.steps, "std": self.std}

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
'''


@pytest.fixture(scope="module")
def runner_with_gradient_noise(tmp_path_factory):
    """A copy of runner's sources and configs with the two files of regularization=gradient_noise added."""
    import shutil

    import runner
    from runner.config import CONFIG_DIR

    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(Path(runner.__file__).parent, root / "src" / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(CONFIG_DIR, root / "configs")
    (root / "configs" / "regularization" / "gradient_noise.yaml").write_text(NOISE_OPTION)
    (root / "src" / "runner" / "engine" / "gradient_noise.py").write_text(NOISE_COMPONENT)
    (root / "configs" / "regularization" / "idle.yaml").write_text("# A file without a component.\nidle:\n  p: 0.1\n")
    return root


def _noisy_cli(root: Path, args: list[str], check: bool = True, chosen: str = "[l2,gradient_noise]"):
    return run_cli([*TINY, *FAST, "trainer.epochs=1", f"regularization={chosen}", *args], cwd=root,
                   env={"PYTHONPATH": str(root / "src")}, check=check)


@pytest.mark.slow  # a run of the copied checkout in a subprocess
def test_a_loop_regularizer_is_its_option_file_and_its_component(runner_with_gradient_noise, tmp_path):
    """The table takes the new file (its keys, its component), the loop calls its hook every step, its summary and
    tag are recorded as it declares them (an undeclared tag would fail the run), its state goes into the checkpoint
    and its keys into config.yaml."""
    root = runner_with_gradient_noise
    _noisy_cli(root, [f"hydra.run.dir={tmp_path}"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["gradient_noise"] == {"steps": metrics["steps"], "std": 0.01}
    assert checkpoint.load(tmp_path / train.LAST)["components"]["gradient_noise"] == {"steps": metrics["steps"]}
    recorded = OmegaConf.load(tmp_path / "config.yaml").regularization.gradient_noise
    assert recorded == {"_target_": "runner.engine.gradient_noise.GradientNoise", "std": 0.01}


def test_a_loop_regularizer_s_keys_are_checked_as_its_file_types_them(runner_with_gradient_noise):
    """A misspelled key of the new regularizer, a value of the wrong type, and a regularizer whose file names no
    component (it would act nowhere) are runner's one line, exit 2."""
    root = runner_with_gradient_noise
    proc = _noisy_cli(root, ["regularization.gradient_noise.stdd=0.1"], check=False)
    assert proc.returncode == 2 and "did you mean regularization.gradient_noise.std?" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _noisy_cli(root, ["regularization.gradient_noise.std=loud"], check=False)
    assert proc.returncode == 2 and "regularization.gradient_noise.std='loud' is invalid: must be a number" in proc.stderr
    proc = _noisy_cli(root, [], check=False, chosen="[l2,idle]")
    assert proc.returncode == 2 and "regularization=idle acts nowhere" in proc.stderr
