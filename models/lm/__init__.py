"""Pretrained causal language models: the unprocessed Flax model and TransformerLens processing
(:mod:`.model`), the ``--model`` family (:mod:`.family`), one converter per architecture."""
