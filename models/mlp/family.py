"""``--model=mlp``: MLP checkpoints on MNIST, CIFAR-10 or digits, and the paper's settings."""

from __future__ import annotations

import numpy as np

from libjax.errors import ConfigError
from libjax.model import SectionedModel
from models.common import cards, images
from models.family import Data, Family, Options, first_samples, reject_unused
from models.mlp.model import (
    DEFAULT_CHECKPOINT,
    all_node_layers,
    check_node_layers,
    load,
    sectioned_model,
)


class MLPFamily(Family):
    """``--model=mlp``: any checkpoint of this module's format on MNIST, CIFAR-10 or digits.

    Defaults: the shipped digits MLP; all node layers; the dataset recorded in the checkpoint, else
    the one whose image size fits the input width; the ``train`` split.
    """

    name = "mlp"

    def node_layers(self, opts: Options) -> tuple[str, ...]:
        if opts.layer is not None:
            raise ConfigError("--layer selects a transformer block; for an MLP give "
                              "--node_layers (e.g. layers.1,layers.2)")
        cfg, _, _ = load(opts.checkpoint)
        return check_node_layers(opts.node_layers or all_node_layers(cfg), cfg)

    def ablation_defaults(self, opts: Options) -> dict:
        """Accuracy in batches of 512 (docs/method.md 5). MNIST and CIFAR-10: the paper's MNIST
        ablations, on the train split with the exponential schedule (cutoff 10, base 2). digits: the
        held-out test split, which the graphs (built on the train split) never saw, as in the
        paper's modular-addition ablations: with 1437 train images (not MNIST's 60 000) scores
        on the build data would flatter both bases. Every number of directions is evaluated
        (no digits layer is wider than 65); ``exp_base`` applies if a cutoff is given."""
        if self.dataset(opts) == "digits":
            return {"split": "test", "metric": "accuracy", "batch_size": 512,
                    "ablate_every_vec_cutoff": None, "exp_base": 2.0}
        return {"split": "train", "metric": "accuracy", "batch_size": 512,
                "ablate_every_vec_cutoff": 10, "exp_base": 2.0}

    def load(self, opts: Options, node_layers) -> SectionedModel:
        cfg, weights, _ = load(opts.checkpoint)
        return sectioned_model(weights, cfg, node_layers, dtype=np.dtype(opts.dtype))

    def dataset(self, opts: Options) -> str:
        """``opts.dataset``, else the checkpoint's, else the one matching its input width."""
        cfg, _, meta = load(opts.checkpoint)
        name = opts.dataset or meta.get("dataset") or images.dataset_for_input_dim(cfg.widths[0])
        if name is None:
            raise ConfigError(f"no dataset has {cfg.widths[0]}-pixel images; pass --dataset")
        pixels = int(np.prod(images.IMAGE_SHAPES.get(name, (cfg.widths[0],))))
        if pixels != cfg.widths[0]:
            raise ConfigError(f"{name} images have {pixels} pixels but the checkpoint's MLP takes "
                              f"{cfg.widths[0]} inputs; pass the --dataset it was trained on")
        return name

    def data(self, opts: Options) -> Data:
        reject_unused(opts, "an MLP (no sequence axis)", ("n_ctx",))
        name, split = self.dataset(opts), opts.split or "train"
        x, y = images.load(name, split, opts.data_dir)
        inputs, gram_inputs = first_samples(x, opts, f"the {name} {split} split")
        return Data(inputs=inputs, gram_inputs=gram_inputs, labels=y[:len(inputs)])

    def model_id(self, opts: Options) -> str:
        return str(opts.checkpoint or DEFAULT_CHECKPOINT)

    def feature_cards(self, opts: Options, model, graph, data: Data, node_layers, **options):
        shape = images.IMAGE_SHAPES[self.dataset(opts)]
        return cards.image_cards(model, graph, data, node_layers, shape, **options)


FAMILY = MLPFamily()
