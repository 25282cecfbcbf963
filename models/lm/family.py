"""The ``--model`` family of a pretrained causal LM architecture: checkpoint resolution, one
block's node layers, text data and the paper's build settings (docs/method.md 5)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import flax.linen as nn
import numpy as np

from libjax.errors import CheckpointError, ConfigError, DataError
from models.common import cards, checkpoints, hf, text, transformer
from models.family import Data, Family, select_blocks
from models.lm import evaluation
from models.lm.model import (
    LanguageModel,
    block_node_layers,
    blocks_of,
    expected_shapes,
    extent,
    processed_weights,
    sectioned_model,
    truncated_model,
)

_resolve = functools.lru_cache(maxsize=8)(hf.resolve)
ATTENTION_NODE_MODULES = ("ln1", "ln1_out", "attn_in")  # node layers before the attention


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
        return sectioned_model(self.name, cfg, tl, node_layers, self._n_ctx(opts, cfg),
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

    def _tokens(self, directory, hf_config, cfg, pieces) -> np.ndarray:
        """The token stream of a corpus's pieces, documents ended by the model's EOS."""
        eos = hf_config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        if eos is None:
            raise CheckpointError(f"{directory / hf.CONFIG} has no eos_token_id, which separates "
                                  "documents")
        tokens = text.token_stream(pieces, lambda: hf.load_tokenizer(directory), eos)
        text.check_vocab(tokens, cfg.d_vocab)
        return tokens

    def _corpus(self, opts) -> tuple[np.ndarray, dict]:
        """The build corpus's tokens and the record that finds them again."""
        directory, hf_config, cfg = self._checkpoint(opts)
        if opts.data_dir:
            path = str(Path(opts.data_dir).expanduser().resolve())
            record = {"data_dir": path}
            pieces = text.local_corpus(path)
        else:
            record = {"dataset": opts.dataset or self.default_dataset,
                      "split": opts.split or "train", "max_documents": self.max_documents}
            pieces = text.hub_corpus(record["dataset"], self.max_documents, record["split"])
        tokens = self._tokens(directory, hf_config, cfg, pieces)
        return tokens, dict(record, n_tokens=len(tokens), tokens_sha256=evaluation.digest(tokens))

    def data(self, opts):
        _, _, cfg = self._checkpoint(opts)
        n_ctx = self._n_ctx(opts, cfg)
        tokens, record = self._corpus(opts)
        pool = text.chunks(tokens, n_ctx)
        n = opts.n_samples or self.n_samples
        n_gram = opts.n_gram_samples or (opts.n_samples or self.n_gram_samples)
        inputs, gram_inputs = text.sample(pool, n, n_gram, opts.seed)
        record.update(n_ctx=n_ctx, seed=opts.seed, n_chunks=len(pool))
        return Data(inputs.astype(np.int32), gram_inputs.astype(np.int32), source=record)

    def ablation_defaults(self, opts):
        # The reference's language-model ablations (rib_scripts/ablations/*pythia-14m.yaml):
        # next-token cross-entropy, a linear schedule of 20 points stopped 1.5 nats from the
        # unablated loss. The batch holds about 0.5 GB of float32 logits; 100 held-out chunks.
        _, _, cfg = self._checkpoint(opts)
        n_ctx = self._n_ctx(opts, cfg)
        return {"split": None, "metric": "ce_loss", "schedule": "linear", "n_points": 20,
                "early_stopping_threshold": 1.5, "score_target_difference": 0.05,
                "n_samples": 100, "batch_size": max(1, 2**29 // (4 * n_ctx * cfg.d_vocab))}

    def evaluation_data(self, opts, build_info, data_dir):
        """Next-token labelled chunks of the build's context: the whole of ``data_dir`` if
        given, else the build corpus's held-out chunks (:mod:`models.lm.evaluation`); at most
        ``opts.n_samples`` of them, the first in corpus order."""
        directory, hf_config, cfg = self._checkpoint(opts)
        n_ctx = self._n_ctx(opts, cfg)
        if data_dir:
            tokens = self._tokens(directory, hf_config, cfg, text.local_corpus(data_dir))
            chunks = evaluation.scored_chunks(len(tokens), n_ctx)
            source = {"evaluation_data": "--data_dir, used whole", "data_dir": str(data_dir)}
        else:
            record = build_info.get("data")
            if not record:
                raise DataError("this build's build.json does not record its corpus (it predates "
                                "libjax 0.2), so no held-out part is known; give evaluation data "
                                "with --data_dir (used whole)")
            build_opts = dataclasses.replace(opts, data_dir=record.get("data_dir"),
                                             dataset=record.get("dataset"),
                                             split=record.get("split"))
            tokens, found = self._corpus(build_opts)
            if found["tokens_sha256"] != record["tokens_sha256"]:
                raise DataError(f"the corpus {record.get('data_dir') or record.get('dataset')} "
                                "has changed since the build (its tokens differ), so the part "
                                "the build did not see is unknown; give evaluation data with "
                                "--data_dir")
            if n_ctx != record["n_ctx"]:
                raise ConfigError(f"the build's samples are {record['n_ctx']} tokens long; its "
                                  f"held-out data cannot be scored at --n_ctx={n_ctx} (leave "
                                  "--n_ctx out, or give evaluation data with --data_dir)")
            pool = len(tokens) // n_ctx
            drawn = text.drawn(pool, max(build_info["n_samples"], build_info["n_gram_samples"]),
                               record["seed"])
            chunks = evaluation.held_out(len(tokens), n_ctx, drawn)
            source = {"evaluation_data": "held-out chunks of the build corpus",
                      "corpus": record.get("data_dir") or record.get("dataset"),
                      "held_out_chunks": int(len(chunks))}
        if not len(chunks):
            raise DataError(f"the evaluation data has {len(tokens)} tokens, too few for one "
                            f"chunk of {n_ctx} tokens and the token after it")
        chunks = chunks[:opts.n_samples]
        inputs, labels = evaluation.labelled(tokens, n_ctx, chunks)
        source.update(n_ctx=n_ctx, n_samples=len(chunks), first_chunk=int(chunks[0]))
        return Data(inputs, inputs, labels, source)

    def sections(self, node_layers):
        # A block's attention part runs from ln1 to the attention's output (ln2), its MLP part
        # from ln2 to the next block's ln1 (the paper's attention / MLP comparison).
        return {name: "attention" if name.split(".")[0] in ATTENTION_NODE_MODULES else "MLP"
                for name in node_layers}

    def model_id(self, opts):  # a GGUF file: PATH.gguf#dequantised-Q4_1 (hf.checkpoint_id)
        return hf.checkpoint_id(str(opts.checkpoint or self.default_checkpoint))

    def feature_cards(self, opts, model, graph, data, node_layers, **options):
        decode = cards.decoder(self._checkpoint(opts)[0])
        return cards.context_cards(model, graph, data, node_layers, decode, **options)
