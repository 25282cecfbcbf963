"""Write a random tiny Pythia (GPT-NeoX) checkpoint and two token corpora sampled from it.

Run with /work/main/.venv/bin/python from /work/main (uses libjax's test helper `randomise`).

    cd /work/main && /work/main/.venv/bin/python /work/ref/make_tiny_pythia.py /work/ref/tiny_pythia

Writes DIR/{config.json, model.safetensors} and DIR/../corpus/build.npy (the build corpus) and
DIR/../corpus_eval/eval.npy (the evaluation tokens): documents sampled from the model itself at
temperature 1, each ended by EOS (id 0), so that the model's next-token loss is well below
log(vocab) and ablations visibly raise it. rotary_emb_base stays 10000 and use_parallel_residual
True: TransformerLens 1.10 (the authors' loader) ignores both fields.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, "/work/main")
from tests.helpers.hf_tiny_families import randomise

VOCAB, D, HEADS, LAYERS, MLP, N_POS = 300, 32, 2, 2, 128, 64


def sample_docs(model, n_docs, length, seed):
    gen = torch.Generator().manual_seed(seed)
    docs = []
    with torch.no_grad():
        ids = torch.randint(1, VOCAB, (n_docs, 1), generator=gen)
        for _ in range(length - 1):
            logits = model(ids).logits[:, -1].double()
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
            nxt[nxt == 0] = 1  # EOS only at the end of a document
            ids = torch.cat([ids, nxt], 1)
    for row in ids.numpy():
        docs.append(np.concatenate([row, [0]]))
    return np.concatenate(docs).astype(np.int64)


def main(out: str):
    out = Path(out)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=MLP, max_position_embeddings=N_POS, rotary_pct=0.25,
        rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, hidden_act="gelu", attn_implementation="eager")
    model = randomise(transformers.GPTNeoXForCausalLM(cfg), seed=0, scale=0.3)
    model.save_pretrained(out)
    build = sample_docs(model, 200, 63, seed=1)   # 12 800 tokens
    evals = sample_docs(model, 36, 63, seed=2)    # 2 304 tokens: 71 chunks of 32 (+1 label)
    (out.parent / "corpus").mkdir(exist_ok=True)
    (out.parent / "corpus_eval").mkdir(exist_ok=True)
    np.save(out.parent / "corpus" / "build.npy", build)
    np.save(out.parent / "corpus_eval" / "eval.npy", evals)
    print(f"wrote {out} and corpora of {len(build)} / {len(evals)} tokens")


if __name__ == "__main__":
    main(sys.argv[1])
