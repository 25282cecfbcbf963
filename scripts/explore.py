"""The interactive explorer of a built graph: one self-contained page, offline from file://.

    python scripts/explore.py --graph_dir=out/modadd_lib           # writes the page, prints where
    python scripts/explore.py --graph_dir=out/modadd_lib --serve   # serves it, with interventions
    python scripts/explore.py --graph_dir=out/gpt2_lib --data_dir=CORPUS --n_ctx=1024

Writes ``<graph_dir>/explorer/index.html``: one column of nodes per node layer (size: Lambda, or
the variance for PCA), edges by strength, pruned by cumulative share and top-k per node; hover
and click show a node's card. Feature cards (``<graph_dir>/analysis/cards``) and a clustering
(``<graph_dir>/analysis/clustering.json``, see ``scripts/cluster.py``) are computed on first use
and stored with the build. Options the build does not record (a language model's ``--data_dir``
and ``--n_ctx``) must be given again to compute its cards.

With ``--serve`` the page is served on localhost with an API beside it: ``api/ablate`` mean-ablates
the chosen directions of a node or supernode in the graph's basis and answers the model's score
on its evaluation data (as ``ablate.py`` takes them: the family's evaluation data, metric, batch
size and sample count; a language model's held-out chunks of the build corpus, whole model),
computed with ``libjax.ablation``; ``api/edges`` sends a transition's edges up to any share, so a
page whose written edges stop short of the share asked for gets the rest; ``api/view`` keeps the
page's view (supernodes included) in ``view.json`` beside it, which the page opens with from then
on (also when written again without ``--serve``).
"""

from __future__ import annotations

from absl import flags

from libjax.analysis import explorer
from libjax.errors import ConfigError
from libjax.runtime import cli
from models import exploring, script_flags
from models.opened import open_build

_GRAPH_DIR = script_flags.define("graph_dir", required=True)
_OUT = script_flags.define("out", help="the page (default <graph_dir>/explorer/index.html)")
_MODEL = script_flags.define("model")
_CHECKPOINT = script_flags.define("checkpoint")
_DATA_DIR = script_flags.define("data_dir", help="the build's data directory, for the cards")
_DATASET = script_flags.define("dataset", help="the build's dataset, for the cards")
_N_CTX = script_flags.define("n_ctx", help="the build's tokens per sample (language models)")
_N_SAMPLES = script_flags.define("n_samples", help="samples the cards are computed on "
                                 "(default: the model's build data)")
_CARDS = flags.DEFINE_boolean("cards", True, "compute (or read) and show the feature cards")
_RECOMPUTE = flags.DEFINE_boolean("recompute_cards", False, "compute the cards again")
_K = flags.DEFINE_integer("k", None, "examples per card (default: the model family's)")
_CLUSTER = flags.DEFINE_boolean("cluster", True, "colour by the stored clustering, clustering "
                                "with scripts/cluster.py's defaults if none is stored")
_MAX_SHARE = flags.DEFINE_float("max_share", explorer.MAX_SHARE,
                                "write each transition's strongest edges up to this share")
_MAX_EDGES = flags.DEFINE_integer("max_edges", explorer.MAX_EDGES,
                                  "write at most this many edges per transition")
_SERVE = flags.DEFINE_boolean("serve", False, "serve the page on localhost until interrupted")
_PORT = flags.DEFINE_integer("port", 8000, "port for --serve (0: any free port)")


_ABLATION_DTYPE = flags.DEFINE_enum("ablation_dtype", "float32", ["float32", "float64"],
                                    "dtype of --serve's ablations (ablate.py's default)")


def _check_flags() -> None:
    """Every flag's value, before anything is loaded or computed."""
    explorer.check_limits(_MAX_SHARE.value, _MAX_EDGES.value)
    for flag, low in ((_K, 1), (_N_SAMPLES, 1), (_N_CTX, 1)):
        if flag.value is not None and flag.value < low:
            raise ConfigError(f"--{flag.name} must be >= {low}, got {flag.value}")
    if not 0 <= _PORT.value <= 65535:
        raise ConfigError(f"--port must be in 0..65535 (0: any free port), got {_PORT.value}")


def main(argv):
    del argv
    _check_flags()
    options = {k: v for k, v in {"data_dir": _DATA_DIR.value, "dataset": _DATASET.value,
                                 "n_ctx": _N_CTX.value, "n_samples": _N_SAMPLES.value}.items()
               if v is not None}
    build = open_build(_GRAPH_DIR.value, _MODEL.value, _CHECKPOINT.value, **options)
    out, timings = exploring.write_page(build, _OUT.value, _CARDS.value, _RECOMPUTE.value,
                                        _K.value, _CLUSTER.value, _MAX_SHARE.value,
                                        _MAX_EDGES.value)
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB; " +
          ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()) + ")")
    if _SERVE.value:
        exploring.serve(out, build, _PORT.value, _ABLATION_DTYPE.value)


if __name__ == "__main__":
    cli.run(main)
