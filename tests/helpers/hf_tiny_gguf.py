"""A tiny GGUF checkpoint written on the spot, as llama.cpp's converter writes a Llama.

:func:`write_llama` takes a Hugging Face Llama checkpoint directory (e.g. from
:func:`tests.helpers.hf_tiny_families.llama`, with :func:`tests.helpers.hf_tiny.tokenizer`) and
writes it with ``gguf.GGUFWriter`` under llama.cpp's names and metadata keys: query and key rows
permuted as llama.cpp's ``LlamaModel.permute`` does, some tensors quantised with
``gguf.quants.quantize``, the tokenizer as ``tokenizer.ggml.*`` fields. It returns the Hugging
Face weights the file holds once dequantised, which a reader must give back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# llama.cpp tensor name -> Hugging Face name (per block), as its converter maps them
BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
# which llama.cpp tensors get which storage type (rows of 32 values fit Q8_0's and Q4_0's blocks)
QUANTISED = {"attn_q": "Q8_0", "attn_k": "Q4_0", "ffn_up": "Q4_1", "ffn_gate": "Q8_0"}


def llama_cpp_permute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter on a query/key projection: each head's two rotary halves
    ``(2, dh/2)`` become interleaved pairs ``(dh/2, 2)``."""
    return (rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def write_llama(hf_dir: Path, path: Path, quantised: dict = QUANTISED,
                arch: str = "llama") -> dict[str, np.ndarray]:
    """Write the Llama (``arch="qwen2"``: Qwen2, whose Q/K rows llama.cpp leaves unpermuted and
    whose q/k/v biases it stores) checkpoint in ``hf_dir`` as the GGUF file ``path``; the
    dequantised weights it holds, by Hugging Face name, come back."""
    import gguf
    from safetensors.numpy import load_file

    hf_dir = Path(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    h, kv = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(h)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // h)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_tokenizer(writer, hf_dir, config)

    held = {}

    def add(gguf_name: str, hf_name: str, kind: str, heads: int | None = None):
        value = weights[hf_name].astype(np.float32)
        stored = llama_cpp_permute(value, heads) if heads else value
        qtype = gguf.GGMLQuantizationType[quantised.get(kind, "F32")]
        data = gguf.quants.quantize(stored, qtype)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)  # uint8 blocks: the writer knows
        # quantisation blocks run along rows, so the permutation commutes with it
        held[hf_name] = gguf.quants.dequantize(gguf.quants.quantize(value, qtype), qtype)

    add("token_embd.weight", "model.embed_tokens.weight", "token_embd")
    for layer in range(config["num_hidden_layers"]):
        for ours, theirs in BLOCK.items():
            heads = {"attn_q": h, "attn_k": kv}.get(ours) if arch == "llama" else None
            add(f"blk.{layer}.{ours}.weight", f"model.layers.{layer}.{theirs}.weight", ours, heads)
            if f"model.layers.{layer}.{theirs}.bias" in weights:
                add(f"blk.{layer}.{ours}.bias", f"model.layers.{layer}.{theirs}.bias", "bias",
                    heads)
    add("output_norm.weight", "model.norm.weight", "output_norm")
    if "lm_head.weight" in weights:
        add("output.weight", "lm_head.weight", "output")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def _add_tokenizer(writer, hf_dir: Path, config: dict) -> None:
    """The byte-level BPE of ``hf_dir/tokenizer.json`` as llama.cpp stores one: tokens in id
    order, merges as ``"a b"`` strings, special tokens typed as control."""
    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {t["content"] for t in spec["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])


def save_as_hf(weights: dict, hf_dir: Path, out: Path) -> None:
    """``weights`` as a Hugging Face checkpoint in ``out``, with ``hf_dir``'s config and
    tokenizer files."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (hf_dir / name).is_file():
            (out / name).write_bytes((hf_dir / name).read_bytes())


GPT2_BLOCK = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
              "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def write_gpt2(hf_dir: Path, path: Path, qtype: str = "Q8_0") -> dict[str, np.ndarray]:
    """Write the GPT-2 checkpoint in ``hf_dir`` (safetensors, e.g. from
    :func:`tests.helpers.hf_tiny.gpt2_numpy`) as llama.cpp's converter does: Conv1D matrices
    transposed to ``(out, in)``, the (tied) embedding stored again as ``output.weight``, the
    fused ``c_attn`` in ``qtype``. The dequantised Hugging Face weights come back (with
    ``lm_head.weight``)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((Path(hf_dir) / "config.json").read_text())
    weights = {k.removeprefix("transformer."): v for k, v in
               load_file(str(Path(hf_dir) / "model.safetensors")).items()}
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(config["n_layer"])
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(config["n_embd"])
    writer.add_feed_forward_length(config.get("n_inner") or 4 * config["n_embd"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_eos_token_id(config["eos_token_id"])
    held = {}

    def add(gguf_name: str, hf_name: str, value: np.ndarray, transpose: bool, kind: str = "F32"):
        qtype_ = gguf.GGMLQuantizationType[kind]
        stored = value.T.copy() if transpose else value
        writer.add_tensor(gguf_name, gguf.quants.quantize(stored, qtype_), raw_dtype=qtype_)
        back = gguf.quants.dequantize(gguf.quants.quantize(stored, qtype_), qtype_)
        held[hf_name] = back.T if transpose else back

    add("token_embd.weight", "wte.weight", weights["wte.weight"], False)
    add("position_embd.weight", "wpe.weight", weights["wpe.weight"], False)
    for layer in range(config["n_layer"]):
        for theirs, ours in GPT2_BLOCK.items():
            for part in ("weight", "bias"):
                name = f"h.{layer}.{theirs}.{part}"
                matrix = weights[name].ndim == 2
                add(f"blk.{layer}.{ours}.{part}", name, weights[name], matrix,
                    qtype if ours == "attn_qkv" and matrix else "F32")
    add("output_norm.weight", "ln_f.weight", weights["ln_f.weight"], False)
    add("output_norm.bias", "ln_f.bias", weights["ln_f.bias"], False)
    add("output.weight", "lm_head.weight", weights["wte.weight"], False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


NEOX_BLOCK = {"input_layernorm": "attn_norm", "attention.query_key_value": "attn_qkv",
              "attention.dense": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}


def gptneox_numpy(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random GPT-NeoX weights for ``config`` under their Hugging Face names (no torch)."""
    d, m, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes = {"gpt_neox.embed_in.weight": (v, d), "gpt_neox.final_layer_norm.weight": (d,),
              "gpt_neox.final_layer_norm.bias": (d,), "embed_out.weight": (v, d)}
    for layer in range(config["num_hidden_layers"]):
        block = f"gpt_neox.layers.{layer}."
        for name, shape in (("input_layernorm", (d,)), ("post_attention_layernorm", (d,)),
                            ("attention.query_key_value", (3 * d, d)),
                            ("attention.dense", (d, d)), ("mlp.dense_h_to_4h", (m, d)),
                            ("mlp.dense_4h_to_h", (d, m))):
            shapes[block + name + ".weight"] = shape
            shapes[block + name + ".bias"] = shape[:1]
    rng = np.random.default_rng(seed)
    return {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def write_gptneox(config: dict, weights: dict, path: Path) -> dict[str, np.ndarray]:
    """Write GPT-NeoX ``weights`` as llama.cpp's converter does: the fused projection's rows
    reordered from head-major ``(H, 3, dh)`` to ``[Q; K; V]`` (weight and bias), stored in
    Q8_0; the rest F32. The dequantised Hugging Face weights come back."""
    import gguf

    h, d = config["num_attention_heads"], config["hidden_size"]
    writer = gguf.GGUFWriter(str(path), "gptneox")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(int(config["rotary_pct"] * (d // h)))
    writer.add_head_count(h)
    writer.add_parallel_residual(config["use_parallel_residual"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_eos_token_id(config["eos_token_id"])
    held = {}
    names = {"gpt_neox.embed_in.weight": "token_embd.weight",
             "gpt_neox.final_layer_norm.weight": "output_norm.weight",
             "gpt_neox.final_layer_norm.bias": "output_norm.bias",
             "embed_out.weight": "output.weight"}
    for layer in range(config["num_hidden_layers"]):
        for theirs, ours in NEOX_BLOCK.items():
            for part in ("weight", "bias"):
                names[f"gpt_neox.layers.{layer}.{theirs}.{part}"] = f"blk.{layer}.{ours}.{part}"
    for hf_name, gguf_name in names.items():
        value = weights[hf_name]
        fused = "query_key_value" in hf_name
        if fused:  # llama.cpp: cat(qkv[:, 0], qkv[:, 1], qkv[:, 2]) of (H, 3, dh, ...)
            per_head = value.reshape(h, 3, d // h, *value.shape[1:])
            value = np.concatenate([per_head[:, i].reshape(-1, *value.shape[1:])
                                    for i in range(3)])
        qtype = gguf.GGMLQuantizationType["Q8_0" if fused and value.ndim == 2 else "F32"]
        writer.add_tensor(gguf_name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
        back = gguf.quants.dequantize(gguf.quants.quantize(weights[hf_name], qtype), qtype)
        held[hf_name] = back  # Q8_0 blocks run along rows: the reordering commutes with them
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held
