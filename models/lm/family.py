"""The ``--model`` family of a pretrained causal LM architecture: checkpoint resolution, one
block's node layers, text data and the paper's build settings (docs/method.md 5)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Optional

import flax.linen as nn
import numpy as np

from libjax.errors import CheckpointError, ConfigError
from models.common import cards, checkpoints, hf, text, transformer
from models.family import Data, Family, select_blocks
from models.lm.model import (LanguageModel, block_node_layers, blocks_of, expected_shapes,
                             extent, processed_weights, sectioned, truncated_model)

_resolve = functools.lru_cache(maxsize=8)(hf.resolve)


@dataclasses.dataclass(frozen=True)
class LMFamily(Family):
    """The ``--model`` family of a pretrained LM architecture .

    Attributes:
      name, label: ``--model`` name and the model's name in messages.
      config_from_hf: ``config.json`` dict -> architecture (raises on another architecture).
      to_tl: (Hugging Face tensors, config) -> unprocessed TransformerLens-named weights.
      default_checkpoint, default_dataset: hub names used when no flag is given.
      n_ctx: default tokens per sample (None: the model's context).
      max_ctx: cap on the model's context (W_pos is cut), as the reference does for TinyStories.
      n_samples, n_gram_samples: default sample counts (the paper's).
      batch_sizes: ``BuildConfig`` batch sizes for this model.
      max_documents: documents read from a hub dataset (the paper's first 100k).
      model: the unprocessed Flax model whose parameter shapes the checkpoint must have.
    """

    name: str
    label: str
    config_from_hf: Callable[[dict], transformer.TransformerConfig]
    to_tl: Callable[[dict, transformer.TransformerConfig], dict]
    default_checkpoint: str
    default_dataset: str
    n_ctx: Optional[int]
    max_ctx: Optional[int]
    n_samples: int
    n_gram_samples: int
    batch_sizes: dict
    max_documents: int = 100_000
    model: type[nn.Module] = LanguageModel

    def _checkpoint(self, opts) -> tuple[Path, dict, transformer.TransformerConfig]:
        directory = _resolve(opts.checkpoint or self.default_checkpoint, self.label)
        hf_config = hf.read_config(directory)
        cfg = self.config_from_hf(hf_config)
        if self.max_ctx is not None and cfg.n_ctx > self.max_ctx:
            cfg = dataclasses.replace(cfg, n_ctx=self.max_ctx)
        return directory, hf_config, cfg

    def _n_ctx(self, opts, cfg) -> int:
        n_ctx = opts.n_ctx or self.n_ctx or cfg.n_ctx
        if not 1 <= n_ctx <= cfg.n_ctx:
            raise ConfigError(f"--n_ctx={n_ctx} does not fit {self.label}, whose context is "
                              f"1..{cfg.n_ctx} tokens")
        return n_ctx

    def node_layers(self, opts):
        if opts.node_layers:
            if opts.layer is not None:
                raise ConfigError("give --layer or --node_layers, not both")
            return tuple(opts.node_layers)
        _, _, cfg = self._checkpoint(opts)
        layer = 0 if opts.layer is None else opts.layer
        if not 0 <= layer < cfg.n_layers:
            raise ConfigError(f"{self.label} has blocks 0..{cfg.n_layers - 1}; --layer={layer} "
                              "does not exist")
        return block_node_layers(layer, cfg.n_layers)

    def build_defaults(self, opts):
        # The paper's LM settings (docs/method.md 5): one positional source for M' and for the
        # edges, the last node layer PCA-rotated.
        return {"n_stochastic_sources_basis_pos": 1, "n_stochastic_sources_edges": 1,
                "rotate_final_node_layer": True, **self.batch_sizes}

    def _weights(self, opts) -> tuple[transformer.TransformerConfig, dict]:
        """The architecture and the unprocessed TransformerLens-named weights, shapes checked."""
        directory, _, cfg = self._checkpoint(opts)
        tl = self.to_tl(hf.read_weights(directory), cfg)
        if "pos_embed.W_pos" in tl:  # rotary models have none
            tl["pos_embed.W_pos"] = tl["pos_embed.W_pos"][:cfg.n_ctx]
        checkpoints.check_shapes(tl, expected_shapes(cfg, self.model), directory)
        return cfg, tl

    def load(self, opts, node_layers, truncate: bool = False):
        cfg, tl = self._weights(opts)
        if truncate:  # let go of the blocks after the last node layer at once
            tl = blocks_of(tl, *extent(cfg, node_layers))
        return sectioned(self.name, cfg, tl, node_layers, self._n_ctx(opts, cfg),
                         np.dtype(opts.dtype), truncate)

    def load_for_build(self, opts, node_layers):
        # Only the blocks up to the last node layer are processed, folded and kept.
        return self.load(opts, node_layers, truncate=True)

    def blocks(self, opts, spec):
        if opts.node_layers:
            raise ConfigError("give --layer or --node_layers, not both")
        return select_blocks(spec, self._checkpoint(opts)[2].n_layers, self.label)

    def load_blocks(self, opts, blocks):
        cfg, tl = self._weights(opts)
        cuts = [block_node_layers(b, cfg.n_layers) for b in blocks]
        union = tuple(dict.fromkeys(name for cut in cuts for name in cut))
        n_blocks, unembed = extent(cfg, union)
        tl = blocks_of(tl, n_blocks, unembed)
        params = processed_weights(cfg, tl, n_blocks, unembed, np.dtype(opts.dtype))
        n_pos = self._n_ctx(opts, cfg)
        return (truncated_model(self.name, cfg, params, union, n_pos, n_blocks, unembed),
                [truncated_model(self.name, cfg, params, cut, n_pos, *extent(cfg, cut))
                 for cut in cuts])

    def data(self, opts):
        directory, hf_config, cfg = self._checkpoint(opts)
        n_ctx = self._n_ctx(opts, cfg)
        eos = hf_config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        if eos is None:
            raise CheckpointError(f"{directory / hf.CONFIG} has no eos_token_id, which separates "
                                  "documents")
        if opts.data_dir:
            pieces = text.local_corpus(opts.data_dir)
        else:
            pieces = text.hub_corpus(opts.dataset or self.default_dataset, self.max_documents,
                                     opts.split or "train")
        tokens = text.token_stream(pieces, lambda: hf.load_tokenizer(directory), eos)
        text.check_vocab(tokens, cfg.d_vocab)
        pool = text.chunks(tokens, n_ctx)
        n = opts.n_samples or self.n_samples
        n_gram = opts.n_gram_samples or (opts.n_samples or self.n_gram_samples)
        inputs, gram_inputs = text.sample(pool, n, n_gram, opts.seed)
        return Data(inputs.astype(np.int32), gram_inputs.astype(np.int32))

    def model_id(self, opts):
        return str(opts.checkpoint or self.default_checkpoint)

    def feature_cards(self, opts, model, graph, data, node_layers, **options):
        decode = cards.decoder(self._checkpoint(opts)[0])
        return cards.context_cards(model, graph, data, node_layers, decode, **options)
