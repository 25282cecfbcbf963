"""A bias-folded transformer as a flat list of per-sample modules (docs/method.md 1.2, 4.3).

Module ids follow the reference: ``embed, pos_embed, add_embed``, then for each block ``L``
``ln1.L, ln1_out.L, attn_in.L, attn_out.L, add_resid1.L, ln2.L, ln2_out.L, mlp_in.L, mlp_act.L,
mlp_out.L, add_resid2.L``, then ``ln_final, ln_final_out, unembed``. Node layer ``X`` is the
concatenated input tuple of module ``X``. Parameters are a flat dict keyed by TransformerLens
names, already folded: every residual vector has width ``d_model + 1`` with last coordinate 1.

LayerNorm is TransformerLens's ``LNPre`` (affine parts folded into the next weights), split in
two: ``ln*`` emits ``(var, resid)`` and ``ln*_out`` normalises, so the variance is a node of its
own. Without LayerNorm (``normalization=None``) the ``ln`` modules are identities and ``ln*_out``
duplicates the residual, as in the reference.

Attention is causal; GPT-Neo's local layers also mask keys ``local_attn_window`` or more positions
back, and GPT-Neo does not scale the scores (``use_attn_scale=False``). The mask and scale are
public (:func:`attention_mask`, :func:`attention_scale`) so that unfolded models share them.

Pythia (GPT-NeoX) and the Llama family add (SPEC 4.3): rotary position embeddings
(``positional_embedding="rotary"``: no ``pos_embed``/``add_embed``, ``W_E`` carries the constant 1,
``attn_in`` rotates queries and keys, :func:`rotate`), grouped-query attention
(``n_key_value_heads``), parallel attention and MLP (``parallel_attn_mlp``: ``add_resid1`` keeps
the block's input residual beside ``resid + attn`` and ``ln2`` normalises that input), RMSNorm
(``normalization="RMS"``: the ``ln*`` node is the mean square instead of the variance) and the
gated MLP (``gated_mlp``: ``mlp_in`` emits the gate and up projections, ``mlp_act`` their product
``act(gate) * up``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from libjax import model as contract
from libjax.forms import Form
from libjax.forms.attention import AttentionForm
from libjax.forms.layernorm import LayerNormInForm, LayerNormOutForm
from libjax.forms.mlp import MLPForm


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a (folded) sequential transformer."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str = "relu"
    normalization: str | None = None  # None or "LN" (LNPre after folding)
    ln_eps: float = 1e-5  # added to the LayerNorm variance
    use_attn_scale: bool = True  # divide attention scores by sqrt(d_head) (GPT-Neo: no)
    local_attn_layers: tuple[int, ...] = ()  # blocks with GPT-Neo local (sliding-window) attention
    local_attn_window: int = 256  # a query sees keys fewer than this many positions back
    last_pos_module: str | None = None  # e.g. "add_resid1.0": keep only the last position after it
    positional_embedding: str = "standard"  # or "rotary" (GPT-NeoX half-split convention)
    rotary_dim: int = 0  # leading dims of each query/key head that rotate (rotary only)
    rotary_base: float = 10000.0  # theta of the rotary frequencies base ** (-2i / rotary_dim)
    n_key_value_heads: int | None = None  # grouped-query attention (None: n_heads)
    parallel_attn_mlp: bool = False  # attention and MLP both read the block's input (GPT-NeoX)
    gated_mlp: bool = False  # (act(x W_gate) * (x W_in)) W_out (Llama); else act(x W_in) W_out

    @property
    def rotary(self) -> bool:
        return self.positional_embedding == "rotary"

    @property
    def kv_heads(self) -> int:
        return self.n_key_value_heads or self.n_heads


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "identity": lambda x: x,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; supported: {sorted(ACTIVATIONS)} "
                         "(tanh and sigmoid cannot be bias-folded)")
    return ACTIVATIONS[name]


# Scalar float64 twins of the activations, for root finding independent of JAX's dtype settings.
_SCALAR_ACTIVATIONS: dict[str, Callable[[float], float]] = {
    "relu": lambda x: max(x, 0.0),
    "identity": lambda x: x,
    "gelu_new": lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
    "silu": lambda x: x / (1 + math.exp(-x)),
}


def root_one(act_name: str) -> float:
    """The input ``r`` with ``act(r) = 1`` (docs/method.md 1.2): 1 for relu/identity, otherwise
    bisection on [-1, 4] until ``|act(r) - 1| < 1e-11``, which reproduces the reference's value bit
    for bit."""
    if act_name in ("relu", "identity"):
        return 1.0
    act = _SCALAR_ACTIVATIONS[act_name]
    lo, hi = -1.0, 4.0
    while True:
        mid = (lo + hi) / 2
        excess = act(mid) - 1.0
        if abs(excess) < 1e-11:
            return mid
        lo, hi = (lo, mid) if excess > 0 else (mid, hi)


# --- module functions (per sample; every array is (pos, width)) -----------------------------------

def _norm_stat(resid, rms: bool):
    """The normaliser's node over the first d_model coords: the variance (LayerNorm) or the mean
    square (RMSNorm)."""
    body = resid[:, :-1]
    if rms:
        return jnp.mean(body**2, axis=-1, keepdims=True)
    return jnp.var(body, axis=-1, keepdims=True)


def _ln_in(normalized: bool, rms: bool = False):
    def fn(p, inputs):
        (resid,) = inputs
        if not normalized:
            return (resid,)
        return (_norm_stat(resid, rms), resid)
    return fn


def _normalise(var, resid, eps: float, rms: bool = False):
    """``(resid - mean) / sqrt(var + eps)`` on the first d_model coords, then the constant
    (RMSNorm: ``resid / sqrt(mean square + eps)``, no mean subtracted).

    The constant is the residual's own last coordinate, 1 unless an ablation zeroed it: as in the
    reference, a node ablation that removes every direction (the constant's too) removes every
    folded bias downstream. Its derivative is held at zero (``stop_gradient``): the constant
    coordinate is not a direction the method differentiates along, and the closed forms of the
    norm halves, and with them every graph, assume a fresh 1."""
    body = resid[:, :-1]
    centred = body if rms else body - jnp.mean(body, axis=-1, keepdims=True)
    # Ablations can rotate the variance node below zero; clamp as the reference does.
    normed = centred / jnp.sqrt(jnp.maximum(var, 0.0) + eps)
    return jnp.concatenate([normed, jax.lax.stop_gradient(resid[:, -1:])], axis=-1)


def _ln_out(normalized: bool, keep_resid: bool, eps: float, rms: bool = False):
    def fn(p, inputs):
        if not normalized:
            (resid,) = inputs
            return (resid, resid) if keep_resid else (resid,)
        var, resid = inputs
        n = _normalise(var, resid, eps, rms)
        return (n, resid) if keep_resid else (n,)
    return fn


def _dual_ln_in(rms: bool):
    """Parallel blocks' ``ln2``: ``(resid + attn, resid) -> (stat(resid), resid, resid + attn)``;
    the MLP normalises the block's input residual, the attention's sum rides along."""
    def fn(p, inputs):
        summed, resid = inputs
        return (_norm_stat(resid, rms), resid, summed)
    return fn


def _dual_ln_out(eps: float, rms: bool):
    """Parallel blocks' ``ln2_out``: ``(stat, resid, resid + attn) -> (n(resid), resid + attn)``."""
    def fn(p, inputs):
        var, resid, summed = inputs
        return (_normalise(var, resid, eps, rms), summed)
    return fn


def _attn_in(cfg: TransformerConfig, layer: int):
    pre = f"blocks.{layer}.attn."

    def project(n, w):  # (pos, D) x (heads, D, e) -> (pos, heads * e), as one 2-D matmul
        return n @ rearrange(w, "h d e -> d (h e)")

    def fn(p, inputs):
        n, resid = inputs
        q, k = project(n, p[pre + "W_Q"]), project(n, p[pre + "W_K"])
        if cfg.rotary:
            q, k = rotate(cfg, q, cfg.n_heads), rotate(cfg, k, cfg.kv_heads)
        return (q, k, project(n, p[pre + "W_V"]), resid)
    return fn


def rotary_angles(cfg: TransformerConfig, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` ``(n_pos, rotary_dim)`` of the rotary angles ``t * base**(-2i/r)``
    (each frequency twice, for the two halves), in float64 NumPy: constants of the model."""
    r = cfg.rotary_dim
    inv_freq = 1.0 / cfg.rotary_base ** (np.arange(0, r, 2, dtype=np.float64) / r)
    angles = np.arange(n_pos, dtype=np.float64)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def rotate(cfg: TransformerConfig, x, n_heads: int):
    """Rotary embedding of queries or keys ``(..., pos, n_heads * d_head)`` at positions
    ``0..pos-1``: in each head the first ``rotary_dim`` dims, as two halves ``(x1, x2)``, become
    ``x cos + (-x2, x1) sin`` (GPT-NeoX's half-split convention); the rest pass through."""
    n_pos, r = x.shape[-2], cfg.rotary_dim
    cos, sin = (jnp.asarray(a, x.dtype)[:, None, :] for a in rotary_angles(cfg, n_pos))
    heads = x.reshape(*x.shape[:-1], n_heads, -1)
    rot, rest = heads[..., :r], heads[..., r:]
    half = r // 2
    turned = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    heads = jnp.concatenate([rot * cos + turned * sin, rest], axis=-1)
    return heads.reshape(x.shape)


def attention_mask(cfg: TransformerConfig, layer: int, n_pos: int) -> np.ndarray:
    """Which keys (columns) each query (row) of block ``layer`` attends to, ``(n_pos, n_pos)``:
    causal, and on GPT-Neo's local layers only the last ``local_attn_window`` positions."""
    query, key = np.arange(n_pos)[:, None], np.arange(n_pos)[None, :]
    allowed = key <= query
    if layer in cfg.local_attn_layers:
        allowed &= query - key < cfg.local_attn_window
    return allowed


def attention_scale(cfg: TransformerConfig) -> float:
    """The divisor of the attention scores: ``sqrt(d_head)``, or 1 without scaling (GPT-Neo)."""
    return math.sqrt(cfg.d_head) if cfg.use_attn_scale else 1.0


def _attend(cfg: TransformerConfig, layer: int, p, q, k, v, queries: slice):
    """Attention output ``(queries, D)`` of the query positions ``queries`` (keys: all)."""
    pre, h = f"blocks.{layer}.attn.", cfg.n_heads
    # (heads, pos, e) layout: batch-like axes first, which XLA turns into fast batched matmuls
    q = rearrange(q[queries], "p (h e) -> h p e", h=h)
    # grouped-query attention: query head h reads key/value head h // (n_heads / kv_heads)
    k, v = (jnp.repeat(rearrange(a, "p (h e) -> h p e", h=cfg.kv_heads), h // cfg.kv_heads, axis=0)
            for a in (k, v))
    scores = q @ jnp.swapaxes(k, -1, -2) / attention_scale(cfg)
    allowed = attention_mask(cfg, layer, k.shape[1])[queries]
    pattern = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
    z = rearrange(pattern @ v, "h p e -> p (h e)")
    return z @ rearrange(p[pre + "W_O"], "h e d -> (h e) d")


def _attn_out(cfg: TransformerConfig, layer: int):
    def fn(p, inputs):
        q, k, v, resid = inputs
        return (_attend(cfg, layer, p, q, k, v, slice(None)), resid)
    return fn


def _attn_add_last(cfg: TransformerConfig, layer: int):
    """``attn_out`` then ``add_resid1`` keeping only the last position, computing the attention
    of the last query alone (the other queries' outputs would be discarded)."""
    def fn(p, inputs):
        q, k, v, resid = inputs
        return (resid[-1:] + _attend(cfg, layer, p, q, k, v, slice(-1, None)),)
    return fn


def _add(last_pos_only: bool, keep_resid: bool = False):
    """``resid + update`` (``keep_resid``, for parallel blocks: ``(resid + update, resid)``)."""
    def fn(p, inputs):
        update, resid = inputs
        out = resid + update
        if keep_resid:
            return (out, resid)
        return (out[-1:] if last_pos_only else out,)
    return fn


def _mlp_in(layer: int, gated: bool = False):
    def fn(p, inputs):
        n, resid = inputs
        up = n @ p[f"blocks.{layer}.mlp.W_in"]
        return (n @ p[f"blocks.{layer}.mlp.W_gate"], up, resid) if gated else (up, resid)
    return fn


def _mlp_act(act: Callable, gated: bool = False):
    def fn(p, inputs):
        if gated:
            gate, up, resid = inputs
            return (act(gate) * up, resid)
        pre, resid = inputs
        return (act(pre), resid)
    return fn


def _mlp_out(layer: int):
    def fn(p, inputs):
        post, resid = inputs
        return (post @ p[f"blocks.{layer}.mlp.W_out"], resid)
    return fn


def _embed(p, tokens):
    return (p["embed.W_E"][tokens], tokens)


def _embed_rotary(p, tokens):
    """Rotary models have no position embedding: ``W_E`` carries the constant 1 itself."""
    return (p["embed.W_E"][tokens],)


def _pos_embed(p, inputs):
    tok, tokens = inputs
    return (tok, p["pos_embed.W_pos"][: tokens.shape[0]])


def _add_embed(p, inputs):
    tok, pos = inputs
    return (tok + pos,)


def _unembed(p, inputs):
    (n,) = inputs
    return (n @ p["unembed.W_U"],)


def modules(cfg: TransformerConfig, n_blocks: int | None = None,
            unembed: bool = True) -> list[contract.Module]:
    """The flat module list of a folded transformer, in reference order.

    ``n_blocks`` below ``cfg.n_layers`` truncates it for a build that ends inside the model: the
    first ``n_blocks`` blocks, then ``ln1.{n_blocks}`` (no parameters), whose input is the
    residual after them. ``unembed=False`` ends a whole model at ``ln_final_out``."""
    n_blocks = cfg.n_layers if n_blocks is None else n_blocks
    ln, rms, eps = cfg.normalization is not None, cfg.normalization == "RMS", cfg.ln_eps
    act = activation(cfg.act_fn)
    if cfg.parallel_attn_mlp and not ln:
        raise ValueError("parallel attention and MLP need a normalisation (ln2 reads the block's "
                         "input)")
    mods: list[contract.Module] = [("embed", _embed_rotary if cfg.rotary else _embed)]
    if not cfg.rotary:
        mods += [("pos_embed", _pos_embed), ("add_embed", _add_embed)]
    for layer in range(n_blocks):
        last1 = cfg.last_pos_module == f"add_resid1.{layer}"
        last2 = cfg.last_pos_module == f"add_resid2.{layer}"
        if cfg.parallel_attn_mlp:
            ln2 = [(f"ln2.{layer}", _dual_ln_in(rms)), (f"ln2_out.{layer}", _dual_ln_out(eps, rms))]
        else:
            ln2 = [(f"ln2.{layer}", _ln_in(ln, rms)),
                   (f"ln2_out.{layer}", _ln_out(ln, keep_resid=True, eps=eps, rms=rms))]
        mods += [
            (f"ln1.{layer}", _ln_in(ln, rms)),
            (f"ln1_out.{layer}", _ln_out(ln, keep_resid=True, eps=eps, rms=rms)),
            (f"attn_in.{layer}", _attn_in(cfg, layer)),
            (f"attn_out.{layer}", _attn_out(cfg, layer)),
            (f"add_resid1.{layer}", _add(last1, keep_resid=cfg.parallel_attn_mlp)),
            *ln2,
            (f"mlp_in.{layer}", _mlp_in(layer, cfg.gated_mlp)),
            (f"mlp_act.{layer}", _mlp_act(act, cfg.gated_mlp)),
            (f"mlp_out.{layer}", _mlp_out(layer)),
            (f"add_resid2.{layer}", _add(last2)),
        ]
    if n_blocks < cfg.n_layers:
        return mods + [(f"ln1.{n_blocks}", _ln_in(ln, rms))]
    mods += [("ln_final", _ln_in(ln, rms)),
             ("ln_final_out", _ln_out(ln, keep_resid=False, eps=eps, rms=rms))]
    return mods + ([("unembed", _unembed)] if unembed else [])


def sectioned_model(name: str, cfg: TransformerConfig, folded_params, node_layers,
                    n_pos: int | None = None, n_blocks: int | None = None,
                    unembed: bool = True) -> contract.SectionedModel:
    """Cut the folded transformer at ``node_layers`` for inputs of ``n_pos`` tokens;
    ``n_blocks`` and ``unembed`` truncate it as in :func:`modules` (then ``folded_params`` needs
    only what those modules read, and the model's tail ends at the truncation, not at the
    logits)."""
    n_pos = cfg.n_ctx if n_pos is None else n_pos
    example = jax.ShapeDtypeStruct((n_pos,), jnp.int32)
    mods = modules(cfg, n_blocks, unembed)
    # Attention mixes positions; the add keeping only the last position changes them.
    positionwise = [mid for mid, _ in mods
                    if not mid.startswith("attn_out.") and mid != cfg.last_pos_module]
    fused = {(f"attn_out.{layer}", f"add_resid1.{layer}"): _attn_add_last(cfg, layer)
             for layer in range(cfg.n_layers) if cfg.last_pos_module == f"add_resid1.{layer}"}
    # The input of ln*_out is (var, resid): its first coordinate is the LayerNorm variance.
    variances = {} if cfg.normalization is None else {
        f"{m}.{layer}": 0 for layer in range(cfg.n_layers) for m in ("ln1_out", "ln2_out")}
    return contract.cut(name, mods, folded_params, example, node_layers, positional=True,
                         positionwise_modules=positionwise,
                         form_of=lambda span: section_form(cfg, span), fused=fused,
                         variances=variances)


def _without_form(cfg: TransformerConfig, kinds: tuple[str, ...]) -> bool:
    """Whether a section made of ``kinds`` holds a structure that no closed form covers."""
    norms = {"ln1", "ln1_out", "ln2", "ln2_out", "ln_final", "ln_final_out"}
    return cfg.normalization == "RMS" and bool(norms & set(kinds)) and len(kinds) > 1


def _attention_matrices(cfg: TransformerConfig, layer: int) -> Callable:
    """``params -> {W_Q, W_K, W_V, W_O}`` of block ``layer``, one per query head: with
    grouped-query attention, query head ``h`` reads key/value head ``h // (H / H_kv)``."""
    pre, group = f"blocks.{layer}.attn.", cfg.n_heads // cfg.kv_heads

    def matrices(p):
        w = {n: p[pre + n] for n in ("W_Q", "W_K", "W_V", "W_O")}
        if group > 1:
            w.update({n: jnp.repeat(w[n], group, axis=0) for n in ("W_K", "W_V")})
        return w
    return matrices


# Modules that pass their input through unchanged when the model has no LayerNorm.
_IDENTITY_WITHOUT_LN = ("ln1", "ln2", "ln_final", "ln_final_out")


def section_form(cfg: TransformerConfig, span: tuple[str, ...]) -> Form | None:
    """The closed form (:mod:`libjax.forms`) of a section made of ``span``'s modules, if any.

    Recognised: a LayerNorm half alone (``ln*``: variance, ``ln*_out``: normalisation); the
    attention block with its residual, entered at ``attn_in`` (input ``(n, resid)``) or, without
    LayerNorm, at ``ln1``/``ln1_out`` (input ``resid``); the MLP block with its residual, entered
    at ``mlp_in`` (input ``(n, resid)``: ``resid + act(n W_in) W_out``, gated:
    ``resid + (act(n W_gate) * (n W_in)) W_out``) or, without LayerNorm, at ``ln2``/``ln2_out``
    (input ``resid``); and the unembedding alone (``n W_U``).

    RMSNorm halves alone get the LayerNorm forms without centring; parallel blocks' ``ln2``
    halves, which carry ``resid + attn`` beside the normalised input, the forms' parallel
    layout. The attention form covers rotary embeddings (the model's angle tables),
    grouped-query attention (``W_K``/``W_V`` repeated per query head) and parallel blocks'
    attention section, whose output ``(resid + attn, resid)`` keeps the input residual. So every
    section between the paper's node layers of GPT-2, Pythia and the Llama family has a form;
    a section spanning an RMSNorm and more takes the general VJP path.
    """
    kinds = tuple(m.split(".")[0] for m in span)
    if _without_form(cfg, kinds):
        return None
    if cfg.normalization is None:
        span = tuple(m for m in span if m.split(".")[0] not in _IDENTITY_WITHOUT_LN)
    kinds = tuple(m.split(".")[0] for m in span)
    if cfg.normalization is not None and len(kinds) == 1:
        centre = cfg.normalization != "RMS"
        layout = "parallel" if cfg.parallel_attn_mlp and kinds[0] in ("ln2", "ln2_out") \
            else "sequential"
        if kinds[0] in ("ln1", "ln2", "ln_final"):
            return LayerNormInForm(centre, layout)
        if kinds[0] in ("ln1_out", "ln2_out", "ln_final_out"):
            return LayerNormOutForm(cfg.ln_eps, keep_resid=kinds[0] != "ln_final_out",
                                    centre=centre, layout=layout)
    if kinds == ("unembed",):
        return MLPForm(None, lambda p: {"R": p["unembed.W_U"]})
    attention = ("attn_in", "attn_out", "add_resid1")
    no_ln = cfg.normalization is None  # then ln*_out only duplicates the residual
    entries = (attention, ("ln1_out",) + attention) if no_ln else (attention,)
    if kinds in entries and len({m.split(".")[1] for m in span}) == 1:
        layer = int(span[-1].split(".")[1])
        return AttentionForm(
            matrices=_attention_matrices(cfg, layer),
            mask=lambda n_pos: attention_mask(cfg, layer, n_pos), scale=attention_scale(cfg),
            layout="shared" if kinds[0] == "ln1_out" else "split",
            last_only=cfg.last_pos_module == f"add_resid1.{layer}",
            rotary_angles=(lambda n_pos: rotary_angles(cfg, n_pos)) if cfg.rotary else None,
            keep_resid=cfg.parallel_attn_mlp)
    mlp = ("mlp_in", "mlp_act", "mlp_out", "add_resid2")
    entries = (mlp, ("ln2_out",) + mlp) if no_ln else (mlp,)
    if kinds not in entries or len({m.split(".")[1] for m in span}) != 1:
        return None
    layer = span[-1].split(".")[1]
    w_in, w_out = f"blocks.{layer}.mlp.W_in", f"blocks.{layer}.mlp.W_out"
    act, gated = activation(cfg.act_fn), cfg.gated_mlp

    def reading(p):  # B: the gate's and the up projection's weights side by side (gated)
        return jnp.concatenate([p[f"blocks.{layer}.mlp.W_gate"], p[w_in]], axis=1) if gated \
            else p[w_in]
    if kinds[0] == "ln2_out":  # no LayerNorm: the normed input is the residual itself
        # constants in NumPy: no compiled op when libjax evaluates the form on the host
        return MLPForm(act, lambda p: {
            "B": reading(p), "D": p[w_out], "R": np.eye(p[w_out].shape[1], dtype=p[w_out].dtype)},
            gated)

    def matrices(p):  # input (n, resid): n feeds the MLP, resid the skip connection
        d, b = p[w_out].shape[1], reading(p)
        return {"B": jnp.concatenate([b, jnp.zeros_like(b)]), "D": p[w_out],
                "R": np.concatenate([np.zeros((d, d)), np.eye(d)]).astype(p[w_out].dtype)}
    return MLPForm(act, matrices, gated)


# --- bias folding (docs/method.md 1.2)
# ----------------------------------------------------------------------

def fold_biases(cfg: TransformerConfig, tl: dict, dtype=np.float64,
                n_blocks: int | None = None) -> dict:
    """TransformerLens-named weights and biases -> folded weights (residual width d_model + 1).

    Missing biases count as zero. Rotary models have no ``W_pos``; their ``W_E`` gets the column
    of ones. Gated MLPs fold ``W_gate`` with ``root_one`` and ``W_in`` (up) with 1 in the bias
    row's extra column, so that ``act(gate) * up`` carries the constant 1. Returns NumPy arrays of
    ``dtype``. ``n_blocks``: fold only the first ``n_blocks`` blocks (default: all); the
    unembedding only where ``tl`` has it.
    """
    a = lambda k: np.asarray(tl[k], dtype=np.float64)  # noqa: E731
    zeros = lambda *s: np.zeros(s)  # noqa: E731
    get = lambda k, *s: a(k) if k in tl else zeros(*s)  # noqa: E731
    d, h, dh, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    hkv = cfg.kv_heads
    constant = np.ones if cfg.rotary else np.zeros
    out = {"embed.W_E": np.concatenate([a("embed.W_E"), constant((cfg.d_vocab, 1))], axis=1)}
    if not cfg.rotary:
        out["pos_embed.W_pos"] = np.concatenate(
            [a("pos_embed.W_pos"), np.ones((len(tl["pos_embed.W_pos"]), 1))], axis=1)
    r = root_one(cfg.act_fn)

    def fold_in(w, b, corner):  # (d, k) + bias (k,) -> (d+1, k+1); the new column is corner * e_d
        top = np.concatenate([w, zeros(d, 1)], axis=1)
        return np.concatenate([top, np.concatenate([b, [corner]])[None, :]], axis=0)

    for layer in range(cfg.n_layers if n_blocks is None else n_blocks):
        at, ml = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        for name, heads in (("Q", h), ("K", hkv)):
            w, b = a(at + f"W_{name}"), get(at + f"b_{name}", heads, dh)
            out[at + f"W_{name}"] = np.concatenate([w, b[:, None, :]], axis=1)
        w_v, b_v = a(at + "W_V"), get(at + "b_V", hkv, dh)
        w_v = np.concatenate([w_v, b_v[:, None, :]], axis=1)  # (hkv, d+1, dh)
        extra = np.zeros((hkv, d + 1, 1))
        extra[:, d, 0] = 1.0
        out[at + "W_V"] = np.concatenate([w_v, extra], axis=2)
        w_o, b_o = a(at + "W_O"), get(at + "b_O", d)
        w_o = np.concatenate([w_o, np.broadcast_to(b_o / h, (h, 1, d))], axis=1)  # (h, dh+1, d)
        out[at + "W_O"] = np.concatenate([w_o, zeros(h, dh + 1, 1)], axis=2)
        if cfg.gated_mlp:
            out[ml + "W_gate"] = fold_in(a(ml + "W_gate"), get(ml + "b_gate", m), r)
            out[ml + "W_in"] = fold_in(a(ml + "W_in"), get(ml + "b_in", m), 1.0)
        else:
            out[ml + "W_in"] = fold_in(a(ml + "W_in"), get(ml + "b_in", m), r)
        w_out, b_out = a(ml + "W_out"), get(ml + "b_out", d)
        w_out = np.concatenate([w_out, b_out[None, :]], axis=0)
        out[ml + "W_out"] = np.concatenate([w_out, zeros(m + 1, 1)], axis=1)
    if "unembed.W_U" in tl:
        out["unembed.W_U"] = np.concatenate(
            [a("unembed.W_U"), get("unembed.b_U", cfg.d_vocab)[None, :]], axis=0)
    return {k: v.astype(dtype, copy=False) for k, v in out.items()}
