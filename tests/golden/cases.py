"""The fixed runs whose metrics must not change when the engine is restructured: every option of every config group
appears in at least one of them (synthetic data, CPU, a few steps, fixed seeds). `python tests/golden/record.py`
writes their metrics to tests/golden/metrics.json; tests/test_golden.py runs them again and compares."""

SMALL = [
    "data=synthetic", "data.train_examples=700", "data.test_examples=200", "data.val_size=100", "device=cpu",
    "trainer.epochs=2", "trainer.batch_size=100", "trainer.eval_batch_size=200", "trainer.log_every_steps=2",
    "trainer.progress=false", "diagnostics.every_steps=3",
]
NARROW_CNN = ["model=cnn", "model.widths=[8,16,16]"]

# name -> overrides (after SMALL). "pretrained" is filled with the directory of the case named "source".
CASES = {
    "source": [*NARROW_CNN],
    "default_cnn": [],
    "mlp_sigmoid_xavier": ["model=mlp", "model.depth=2", "model.width=32", "activation=sigmoid", "init=xavier_normal",
                           "norm=none", "optimizer=sgd", "schedule=constant", "regularization=[]",
                           "augmentation=none", "preprocess=none"],
    "mlp_tanh_lecun": ["model=mlp", "model.depth=2", "model.width=32", "activation=tanh", "init=lecun_normal",
                       "norm=layer", "optimizer=adagrad", "schedule=step", "schedule.step_epochs=1",
                       "regularization=[l1]", "augmentation=flip", "preprocess=center"],
    "mlp_selu_dropout": ["model=mlp", "model.depth=2", "model.width=32", "activation=selu", "init=lecun_uniform",
                         "norm=none", "optimizer=rmsprop", "schedule=multistep", "schedule.milestone_epochs=[1]",
                         "regularization=[alpha_dropout]", "preprocess=pixel_mean", "evaluation.mc_dropout_passes=2"],
    "cnn_leaky_he": [*NARROW_CNN, "activation=leaky_relu", "init=he_normal", "norm=batch", "optimizer=adam",
                     "schedule=exponential", "regularization=[l2,dropout]", "augmentation=crop_flip_jitter",
                     "preprocess=standardize", "averaging=ema", "averaging.decay=0.9"],
    "cnn_rrelu_uniform": [*NARROW_CNN, "activation=rrelu", "init=he_uniform", "norm=group", "norm.groups=4",
                          "optimizer=adamw", "schedule=power", "regularization=[weight_decay,gaussian_dropout]",
                          "augmentation=cutout", "preprocess=pca", "preprocess.components=20"],
    "cnn_prelu_orthogonal": [*NARROW_CNN, "activation=prelu", "init=orthogonal", "norm.position=after",
                             "optimizer=adamax", "schedule=cosine", "regularization=[elastic_net,dropconnect]",
                             "augmentation=scale", "preprocess=zca"],
    "cnn_elu_normal": [*NARROW_CNN, "activation=elu", "init=normal", "optimizer=nadam",
                       "schedule=cosine_restarts", "schedule.cycle_epochs=1",
                       "regularization=[l2,max_norm,label_smoothing]", "averaging=lookahead",
                       "averaging.every_steps=2"],
    "cnn_gelu_uniform": [*NARROW_CNN, "activation=gelu", "init=uniform", "optimizer=nesterov", "schedule=cyclic",
                         "schedule.half_cycle_epochs=0.5", "regularization=[l2,grad_clip]",
                         "evaluation.tta_flip=true", "evaluation.tta_translate=1"],
    "cnn_silu_constant": [*NARROW_CNN, "activation=silu", "init=constant", "optimizer=momentum",
                          "schedule=plateau", "schedule.patience_epochs=0", "regularization=[l2,early_stopping]",
                          "regularization.early_stopping.patience_epochs=1", "trainer.epochs=3"],
    "cnn_maxout_zeros": [*NARROW_CNN, "activation=maxout", "init=zeros", "optimizer=sgd", "optimizer.impl=reference",
                         "schedule=onecycle", "schedule.warmup_epochs=1", "trainer.lr_reference_batch_size=256"],
    "cnn_adam_reference": [*NARROW_CNN, "optimizer=adam", "optimizer.impl=reference", "optimizer.bias_correction=false",
                           "schedule=constant"],
    "resnet_stochastic_depth": ["model=resnet", "model.widths=[8,16,16]", "model.blocks_per_stage=1",
                                "regularization=[l2,stochastic_depth]", "init=default"],
    "resnet18_narrow": ["model=resnet18", "model.widths=[8,8,16,16]", "trainer.epochs=1"],
    "vgg_narrow": ["model=vgg", "model.stages=[[8],[16],[16]]", "model.fc_widths=[32]", "regularization=[l2,dropout]",
                   "trainer.epochs=1"],
    "airbench_fast": ["+experiment=fast", "model.widths=[16,32,32]", "model.stem_width=12", "data.val_size=100",
                      "trainer.epochs=2", "trainer.batch_size=100", "init.whiten_images=300",
                      "init.first_layer_bias_epochs=1", "trainer.lr_reference_batch_size=null",
                      "optimizer.lr=0.2", "trainer.precision=fp32", "trainer.channels_last=false"],
    "torchvision_resnet18": ["model=torchvision_resnet18", "trainer.epochs=1", "data.train_examples=300"],
    "transfer_linear_probe": [*NARROW_CNN, "model.pretrained=SOURCE", "transfer=linear_probe"],
    "transfer_finetune": [*NARROW_CNN, "model.pretrained=SOURCE", "transfer=finetune"],
    "transfer_freeze_until": [*NARROW_CNN, "model.pretrained=SOURCE", "transfer=freeze_until",
                              "transfer.freeze_until=features.0"],
    "transfer_gradual": [*NARROW_CNN, "model.pretrained=SOURCE", "transfer=gradual_unfreeze", "trainer.epochs=3"],
    "task_split": [*NARROW_CNN, "data.classes=[0,1,2,3,4]", "data.train_half=first", "data.per_class=10"],
    "autoencoder": [*NARROW_CNN, "objective=autoencoder", "objective.decoder_width=16"],
}


def _as_recorded(overrides: list[str]) -> list[str]:
    """The cases were recorded when the default optimizer was momentum at lr 0.05 (momentum and Nesterov both), the
    fast preset's TTA averaged probabilities over equal views and the autoencoder trained at optimizer.lr: a case
    that relies on those defaults gets them spelled out, so that the record still checks the same computation
    (the defaults changed since, not the engine)."""
    chosen = next((o.split("=", 1)[1] for o in overrides if o.startswith("optimizer=")), None)
    fast = "+experiment=fast" in overrides
    own_lr = any(o.startswith("optimizer.lr=") for o in overrides)
    if chosen is None and not fast:
        overrides = [*overrides, "optimizer=momentum"]
    if chosen in (None, "momentum", "nesterov") and not fast and not own_lr:
        overrides = [*overrides, "optimizer.lr=0.05"]
    if fast:
        overrides = [*overrides, "evaluation.tta_average=probs", "evaluation.tta_translate_weight=null"]
    if "objective=autoencoder" in overrides:
        overrides = [*overrides, "objective.lr_factor=1"]
    return overrides


CASES = {name: _as_recorded(overrides) for name, overrides in CASES.items()}

# Keys of metrics.json that measure time or the machine, not what was computed.
TIMING = ("wall_time_s", "first_step_at", "startup_s", "startup", "epoch_s", "img_per_s", "final_epoch_s",
          "final_img_per_s", "val_s", "final_val_s")


def comparable(metrics):
    """metrics.json without the timings, recursively (history entries too)."""
    if isinstance(metrics, dict):
        return {k: comparable(v) for k, v in metrics.items() if k not in TIMING}
    if isinstance(metrics, list):
        return [comparable(v) for v in metrics]
    return metrics
