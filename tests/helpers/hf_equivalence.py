"""What the Hugging Face equivalence tests of every language-model architecture share: running a
transformers model with hooks, converting its checkpoint, and the three-level logit check.

The three levels, each to :data:`TOL` in the model's dtype: the converted, unprocessed Flax model
gives HF's logits; after weight processing (TransformerLens's for LayerNorm, scale folding for
RMSNorm) it gives HF's logits minus their mean over the vocabulary (the unembedding is centred);
so does the bias-folded, sectioned model that ``--model=...`` loads.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from models.common import hf, weight_processing
from models.family import Options

N_POS = 12  # > the GPT-Neo window (4), so local attention matters
TOL = {np.float32: 1e-5, np.float64: 1e-10}


def ours(directory, arch):
    """``(config, unprocessed TransformerLens-named weights)`` of the checkpoint in ``directory``
    through converter module ``arch``."""
    cfg = arch.config(hf.read_config(directory))
    return cfg, arch.to_tl(hf.read_weights(directory), cfg)


def hf_run(model, tokens, dtype, recorded: Callable[[str, torch.nn.Module], bool]):
    """HF logits in ``dtype`` and, for every module that ``recorded(name, module)`` selects, its
    (first input or None, output)."""
    model = model.to(torch.float64 if dtype == np.float64 else torch.float32)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            output = output[0] if isinstance(output, tuple) else output
            seen[name] = (inputs[0].detach().numpy() if inputs else None,
                          output.detach().numpy())
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
             if recorded(name, module)]
    try:
        with torch.no_grad():
            logits = model(torch.tensor(tokens)).logits.numpy()
    finally:
        for hook in hooks:
            hook.remove()
    return logits, seen


def assert_logits_at_every_level(logits, cfg, tl, flax_model, family, directory, tokens, dtype):
    """The three levels of the module docstring against HF's ``logits``."""
    apply = jax.jit(flax_model(cfg).apply)
    run = lambda w: apply({"params": {k: jnp.asarray(v, dtype) for k, v in w.items()}},  # noqa
                          jnp.asarray(tokens))
    unprocessed = run(tl)
    assert unprocessed.dtype == dtype
    np.testing.assert_allclose(np.asarray(unprocessed), logits, rtol=0, atol=TOL[dtype])
    centred = logits - logits.mean(-1, keepdims=True)

    # the processing alone: norms keep unit scale (and zero shift)
    rms = cfg.normalization == "RMS"
    processed = weight_processing.process(tl, cfg.n_layers, rms=rms)
    for norm in [k[:-2] for k in tl if k.endswith(("ln1.w", "ln2.w"))] + ["ln_final"]:
        processed[norm + ".w"] = np.ones(cfg.d_model)
        if not rms:
            processed[norm + ".b"] = np.zeros(cfg.d_model)
    np.testing.assert_allclose(np.asarray(run(processed)), centred, rtol=0, atol=TOL[dtype])

    opts = Options(checkpoint=str(directory), n_ctx=tokens.shape[-1], dtype=np.dtype(dtype).name)
    folded = family.load(opts, ("ln1.0", "unembed"))  # what the family's --model loads
    out = jax.jit(jax.vmap(folded.forward, (None, 0)))(folded.params, jnp.asarray(tokens))
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out), centred, rtol=0, atol=TOL[dtype])


def assert_bin_loads_like_safetensors(directory, model, arch, tmp_path):
    """The checkpoint saved as ``pytorch_model.bin`` converts to the very weights of its
    safetensors copy in ``directory``."""
    (tmp_path / hf.CONFIG).write_text((directory / hf.CONFIG).read_text())
    torch.save(model.to(torch.float32).state_dict(), tmp_path / hf.TORCH_BIN)
    cfg = arch.config(hf.read_config(directory))
    a = arch.to_tl(hf.read_weights(tmp_path), cfg)
    b = arch.to_tl(hf.read_weights(directory), cfg)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
