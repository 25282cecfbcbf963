"""``--model=modadd``: the modular-addition transformer, its data and the paper's settings."""

from __future__ import annotations

import numpy as np

from libjax.errors import ConfigError
from models.family import Data, Family, first_samples, reject_unused
from models.modadd import cards, fourier
from models.modadd import model as modadd


class ModAdd(Family):
    """The modular-addition transformer; default: the checkpoint shipped in the package."""

    name = "modadd"

    def node_layers(self, opts):
        if opts.layer not in (None, 0):
            raise ConfigError(f"the modular-addition model has one block; --layer={opts.layer} "
                              "does not exist (use --layer=0 or --node_layers)")
        return opts.node_layers or modadd.PAPER_NODE_LAYERS

    def load(self, opts, node_layers):
        cfg, weights = modadd.load(opts.checkpoint)
        return modadd.sectioned_model(weights, cfg, node_layers, dtype=np.dtype(opts.dtype))

    def data(self, opts):
        reject_unused(opts, "the modular-addition model (its data is every pair a, b)",
                      ("dataset", "data_dir", "n_ctx"))
        split = opts.split or "train"
        tokens, labels = modadd.split_data(split)
        inputs, gram_inputs = first_samples(tokens, opts, f"the modular-addition {split} split")
        return Data(inputs, gram_inputs, labels[:len(inputs)])

    def model_id(self, opts):
        return str(opts.checkpoint or modadd.DEFAULT_CHECKPOINT)

    def ablation_defaults(self, opts):
        return {"split": "test", "metric": "accuracy", "batch_size": 99999,
                "ablate_every_vec_cutoff": 10, "exp_base": 1.05}

    def feature_cards(self, opts, model, graph, data, node_layers, **options):
        if options:
            raise ConfigError(f"modular-addition cards show the whole (a, b) grid; "
                              f"{', '.join(f'--{k}' for k in options)} does not apply")
        return cards.modadd_cards(model, graph, node_layers)

    def direction_labels(self, opts, graph):
        return fourier.labels(self.load(opts, graph.node_layers), graph)


FAMILY = ModAdd()
