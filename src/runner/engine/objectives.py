"""What a run learns (`objective=`): the network the loop trains around the model, its loss, what it counts per
batch, how it is evaluated, and what "the weights" of a checkpoint are. The loop (runner.engine.train) and the
run's state (runner.engine.run) are the same for every objective: they ask the objective, never test its type.

  classify     the model's logits against the labels: cross-entropy (with label smoothing when regularization=
               has it), accuracy; the test adds NLL, calibration and the evaluations of `evaluation=`
  autoencoder  the lecture's unsupervised pretraining: the model up to its output layer is the encoder, a small
               decoder rebuilds the preprocessed image from the encoder's feature vector, mean squared error per
               pixel; labels are never read. The checkpoint keeps the encoder under the classifier's own parameter
               names ("model"), so a later run transfers it with model.pretrained=<run dir>:

    python -m runner objective=autoencoder data.classes=[0,1,2,3,4] trainer.epochs=10
    python -m runner model.pretrained=<that run dir> transfer=linear_probe data.classes=[5,6,7,8,9] data.per_class=20
"""

import torch
from torch import nn

from runner.data import loading as data
from runner.engine import evaluation
from runner.nets.transfer import output_layer


class Classify:
    """Cross-entropy on the labels; accuracy."""

    name = "classify"
    has_accuracy = True

    def __init__(self, label_smoothing: float = 0.0):
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def network(self, model: nn.Module) -> nn.Module:
        return model

    @staticmethod
    def encoder(net: nn.Module) -> nn.Module:
        """The classifier inside the network the loop trains (what model.pretrained and transfer.layer act on)."""
        return net

    @staticmethod
    def weights(net: nn.Module) -> dict:
        """What a model checkpoint holds of the network: the classifier's parameters under "model"."""
        return {"model": net.state_dict()}

    @staticmethod
    def load_weights(net: nn.Module, state: dict) -> None:
        net.load_state_dict(state["model"])

    def loss(self, outputs: torch.Tensor, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(outputs, y)

    @staticmethod
    def correct(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(1) == y).sum()

    @torch.inference_mode()
    def evaluate(self, net: nn.Module, preprocess: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int) -> dict:
        """Mean cross-entropy (without smoothing) and accuracy over a split, in eval mode (batch norm uses its
        running statistics)."""
        was_training = net.training
        net.eval()
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.long)
        for xb, yb in data.eval_batches(x, y, batch_size):
            logits = net(preprocess(xb))
            loss_sum += nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
            correct += (logits.argmax(1) == yb).sum()
        net.train(was_training)
        n = max(1, len(y))
        return {"loss": loss_sum.item() / n, "acc": correct.item() / n}

    def test(self, net: nn.Module, preprocess: nn.Module, splits, evaluation_cfg, batch_size: int, seed: int,
             ema=None, snapshots=()) -> tuple[dict, dict]:
        """(test acc and loss, the further test scores keyed by TensorBoard tag) from one pass over the test split
        plus the passes `evaluation=` asks for."""
        probs = evaluation.probabilities(net, preprocess, splits.test_x, batch_size)
        test = evaluation.scores(probs, splits.test_y, evaluation_cfg.ece_bins)
        test["loss"] = test.pop("nll")
        extra = evaluation.final_scores(net, preprocess, splits.test_x, splits.test_y, evaluation_cfg, batch_size,
                                        seed, ema, snapshots, probs)
        return {"acc": test["acc"], "loss": test["loss"]}, extra

    @staticmethod
    def pictures(net: nn.Module, preprocess: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The images the test shows in TensorBoard, by tag: none for a classifier."""
        return {}


class Decoder(nn.Module):
    """Feature vector (B, F) -> image (B, 3, 32, 32): a linear layer to a (width, 4, 4) map, then three times a 2x
    nearest upsampling and a 3x3 conv block halving the channels (4 -> 8 -> 16 -> 32), then a 3x3 conv to 3 channels."""

    def __init__(self, in_features: int, width: int):
        super().__init__()
        self.width = width
        self.fc = nn.Sequential(nn.Linear(in_features, width * 16), nn.ReLU())
        layers, c = [], width
        for _ in range(3):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c, c // 2, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z):  # z: (B, F) -> (B, 3, 32, 32)
        return self.out(self.up(self.fc(z).view(len(z), self.width, 4, 4)))


class AutoEncoder(nn.Module):
    """The classifier `model` as the encoder (its output layer's input is the code) and a Decoder. Its state dict
    is the encoder's under "encoder." and the decoder's under "decoder."."""

    def __init__(self, model: nn.Module, decoder_width: int):
        super().__init__()
        self.encoder = model
        head = model.get_submodule(output_layer(model))
        self._code = None
        head.register_forward_hook(self._keep_code)
        self.decoder = Decoder(head.in_features, decoder_width)

    def _keep_code(self, module, inputs, output):
        self._code = inputs[0]

    def forward(self, x):  # x: (B, 3, 32, 32) preprocessed -> reconstruction (B, 3, 32, 32)
        self.encoder(x)
        return self.decoder(self._code.flatten(1))


class Reconstruct:
    """The autoencoder's objective: mean squared error per pixel between the reconstruction and the preprocessed
    input; no labels, no accuracy."""

    name = "autoencoder"
    has_accuracy = False

    def __init__(self, decoder_width: int, label_smoothing: float = 0.0, lr_factor: float = 1.0):
        # lr_factor is read where the optimizer is built (build.build_optimizer)
        if label_smoothing:
            raise ValueError("objective=autoencoder reads no labels: label smoothing does not apply")
        self.decoder_width = decoder_width

    def network(self, model: nn.Module) -> nn.Module:
        return AutoEncoder(model, self.decoder_width).to(next(model.parameters()).device)

    @staticmethod
    def encoder(net: AutoEncoder) -> nn.Module:
        return net.encoder

    @staticmethod
    def weights(net: AutoEncoder) -> dict:
        """The encoder under the classifier's own parameter names ("model"), so that a later run transfers it; the
        decoder under "decoder"."""
        return {"model": net.encoder.state_dict(), "decoder": net.decoder.state_dict()}

    @staticmethod
    def load_weights(net: AutoEncoder, state: dict) -> None:
        net.encoder.load_state_dict(state["model"])
        net.decoder.load_state_dict(state["decoder"])

    def loss(self, outputs: torch.Tensor, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(outputs, inputs)

    @torch.no_grad()
    def evaluate(self, net: nn.Module, preprocess: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int) -> dict:
        """Mean squared error per pixel over the images x (uint8), in eval mode."""
        was_training = net.training
        net.eval()
        total = torch.zeros((), device=x.device)
        for xb, _ in data.eval_batches(x, x, batch_size):
            inputs = preprocess(xb)
            total += nn.functional.mse_loss(net(inputs), inputs, reduction="sum")
        net.train(was_training)
        return {"loss": total.item() / max(1, x.numel())}

    def test(self, net, preprocess, splits, evaluation_cfg, batch_size: int, seed: int, ema=None,
             snapshots=()) -> tuple[dict, dict]:
        return self.evaluate(net, preprocess, splits.test_x, splits.test_y, batch_size), {}

    def pictures(self, net: AutoEncoder, preprocess: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The images the test shows in TensorBoard, by tag: originals above their reconstructions."""
        return {"reconstruction/original_then_reconstructed": self.picture(net, preprocess, x)}

    @staticmethod
    @torch.no_grad()
    def picture(net: AutoEncoder, preprocess: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Originals above their reconstructions (2B, 3, 32, 32) in [0, 1], each image min-max scaled as the
        network sees it (preprocessed)."""
        was_training = net.training
        net.eval()
        inputs = preprocess(x)
        both = torch.cat([inputs, net(inputs)]).float()
        net.train(was_training)
        low = both.amin(dim=(1, 2, 3), keepdim=True)
        high = both.amax(dim=(1, 2, 3), keepdim=True)
        return ((both - low) / (high - low).clamp_min(1e-8)).cpu()


