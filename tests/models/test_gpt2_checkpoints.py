"""Loading GPT-2 / GPT-Neo checkpoints and the ``--model=gpt2`` / ``tinystories-1m`` families,
without PyTorch: resolution, conversion errors, node layers, dims, defaults, context limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from libjax.errors import CheckpointError, ConfigError
from models import registry
from models.common import hf
from models.family import Options
from models.lm import gpt2, gptneo
from models.lm import model as lm
from tests.helpers import hf_tiny

ROOT = Path(__file__).resolve().parents[2]

# The config.json of roneneldan/TinyStories-1M (the fields that matter).
TINYSTORIES_CONFIG = {
    "model_type": "gpt_neo", "activation_function": "gelu_new",
    "attention_types": [[["global", "local"], 4]], "hidden_size": 64, "num_heads": 16,
    "num_layers": 8, "intermediate_size": None, "max_position_embeddings": 2048,
    "window_size": 256, "vocab_size": 50257, "layer_norm_epsilon": 1e-5, "eos_token_id": 50256}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("gpt2")
    hf_tiny.gpt2_numpy(directory, n_layer=3)
    return directory


def test_gpt2_family_is_registered():
    assert registry.get("gpt2") is gpt2.FAMILY
    assert registry.get("tinystories-1m") is gptneo.FAMILY


def test_block_node_layers():
    assert lm.block_node_layers(1, 3) == ("ln1.1", "ln1_out.1", "attn_in.1", "ln2.1", "ln2_out.1",
                                          "mlp_in.1", "ln1.2")
    assert lm.block_node_layers(2, 3)[-1] == "ln_final"


def test_family_node_layers_and_paper_defaults(ckpt):
    fam = gpt2.FAMILY
    opts = Options(checkpoint=str(ckpt), layer=2)
    assert fam.node_layers(opts) == lm.block_node_layers(2, 3)
    assert fam.node_layers(Options(checkpoint=str(ckpt))) == lm.block_node_layers(0, 3)
    assert fam.node_layers(Options(checkpoint=str(ckpt), node_layers=("ln2.0", "ln1.1"))) \
        == ("ln2.0", "ln1.1")
    with pytest.raises(ConfigError, match="blocks 0..2"):
        fam.node_layers(Options(checkpoint=str(ckpt), layer=3))
    defaults = fam.build_defaults(opts)
    assert defaults["n_stochastic_sources_basis_pos"] == 1
    assert defaults["n_stochastic_sources_edges"] == 1
    assert defaults["rotate_final_node_layer"] is True


def test_loaded_model_dims(ckpt):
    """Folded widths (docs/method.md 4.4, d = 16): resid d+1, (var, resid) d+2, (normed, resid)
    2d+2."""
    opts = Options(checkpoint=str(ckpt), n_ctx=8)
    node_layers = gpt2.FAMILY.node_layers(opts)
    model = gpt2.FAMILY.load(opts, node_layers)
    assert tuple(layer.width for layer in model.layers) == (17, 18, 34, 17, 18, 34, 17)
    assert tuple(layer.positions for layer in model.layers) == (8,) * 7
    assert model.params["embed.W_E"].dtype == np.float64
    with pytest.raises(ConfigError, match="1..16"):
        gpt2.FAMILY.load(Options(checkpoint=str(ckpt), n_ctx=17), node_layers)
    # every module point of docs/method.md 4.3 is a node layer (4 heads x 4: v has 5 columns per
    # head)
    block = ("ln2.1", "ln2_out.1", "mlp_in.1", "mlp_act.1", "mlp_out.1", "add_resid2.1",
             "ln1.2", "ln1_out.2", "attn_in.2", "attn_out.2", "add_resid1.2")
    tail = ("ln_final", "ln_final_out", "unembed", "output")
    model = gpt2.FAMILY.load(opts, block + tail)
    assert tuple(layer.width for layer in model.layers) == (
        17, 18, 34, 82, 82, 34, 17, 18, 34, 16 + 16 + 20 + 17, 34, 17, 18, 17, hf_tiny.VOCAB)


def test_missing_directory_says_where_and_how(tmp_path):
    with pytest.raises(CheckpointError, match="--checkpoint=DIR") as err:
        hf.resolve(str(tmp_path / "nowhere"), "GPT-2")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_no_weights_without_network_is_a_clean_error(tmp_path):
    """``--model=gpt2`` with no local weights and no network: exit 2, a message saying where it
    looked and how to point at a local checkpoint, and no traceback."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    run = subprocess.run([sys.executable, "scripts/compute_basis.py", "--model=gpt2",
                          f"--out_dir={tmp_path / 'out'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "--checkpoint=DIR" in run.stderr and "'gpt2'" in run.stderr
    assert str(tmp_path / "hf") in run.stderr  # the cache it looked in


def _copy(src: Path, dst: Path, edit_weights=None, edit_config=None) -> Path:
    from safetensors.numpy import load_file, save_file
    dst.mkdir()
    weights = load_file(str(src / hf.SAFETENSORS))
    config = json.loads((src / hf.CONFIG).read_text())
    if edit_weights:
        edit_weights(weights)
    if edit_config:
        edit_config(config)
    save_file(weights, str(dst / hf.SAFETENSORS))
    (dst / hf.CONFIG).write_text(json.dumps(config))
    return dst


def test_checkpoint_errors(ckpt, tmp_path):
    cfg = gpt2.config(hf.read_config(ckpt))
    missing = _copy(ckpt, tmp_path / "missing",
                    edit_weights=lambda w: w.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match="h.1.mlp.c_fc.bias"):
        gpt2.to_tl(hf.read_weights(missing), cfg)
    extra = _copy(ckpt, tmp_path / "extra", edit_weights=lambda w: w.update(
        {"transformer.h.0.crossattention.q": w["transformer.ln_f.bias"]}))
    with pytest.raises(CheckpointError, match="crossattention"):
        gpt2.to_tl(hf.read_weights(extra), cfg)
    with pytest.raises(CheckpointError, match="not GPT-2 .model_type .gpt2.."):
        gpt2.config(TINYSTORIES_CONFIG)
    nan = _copy(ckpt, tmp_path / "nan",
                edit_weights=lambda w: w["transformer.wte.weight"].__setitem__((0, 0), np.nan))
    with pytest.raises(CheckpointError, match="NaN"):
        hf.read_weights(nan)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        hf.read_config(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        hf.read_weights(tmp_path / "empty")


def test_pytorch_bin_without_torch_says_so(tmp_path, monkeypatch):
    (tmp_path / hf.TORCH_BIN).write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(CheckpointError, match="needs PyTorch"):
        hf.read_weights(tmp_path)


def test_tinystories_config_and_context_cut(tmp_path):
    cfg = gptneo.config(TINYSTORIES_CONFIG)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (8, 64, 16, 4, 256)
    assert cfg.local_attn_layers == (1, 3, 5, 7) and cfg.local_attn_window == 256
    assert not cfg.use_attn_scale
    (tmp_path / hf.CONFIG).write_text(json.dumps(TINYSTORIES_CONFIG))
    fam = gptneo.FAMILY
    assert fam.node_layers(Options(checkpoint=str(tmp_path), layer=7))[-1] == "ln_final"
    with pytest.raises(ConfigError, match="1..511"):
        fam.data(Options(checkpoint=str(tmp_path), n_ctx=512, data_dir=str(tmp_path)))
