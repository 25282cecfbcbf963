"""LIB against PCA for any model family, as ``compare_bases.py`` and ``paper_lm.py`` run it:
the family's build and evaluation data, both graphs, their ablations, figures and table (the
library part is :mod:`libjax.analysis.comparison`; this module adds the family, so it lives in
``models``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from libjax import ablation, pipeline
from libjax.analysis import comparison
from libjax.errors import ConfigError
from libjax.storage import files
from models import registry
from models.family import Family, Options


@dataclasses.dataclass(frozen=True)
class Request:
    """What to compare beyond the build options.

    Attributes:
      split: evaluation split (None: the model's).
      n_eval_samples: evaluation samples (None: the model's; all for image and modular data).
      eval_data_dir: a language model's evaluation corpus, used whole (None: held-out chunks).
      score_target_difference: Delta (None: the model's).
      rerun, overwrite: recompute existing records; replace graphs built otherwise.
    """

    split: Optional[str] = None
    n_eval_samples: Optional[int] = None
    eval_data_dir: Optional[str] = None
    score_target_difference: Optional[float] = None
    rerun: bool = False
    overwrite: bool = False


def _defaults(family: Family, opts: Options) -> dict:
    defaults = family.ablation_defaults(opts)
    if defaults is None:
        usable = [n for n in registry.FAMILIES
                  if registry.get(n).ablation_defaults(Options()) is not None]
        raise ConfigError(f"--model={family.name} has no labelled evaluation data to ablate on; "
                          f"compare bases of {', '.join(usable)}")
    return defaults


def plan(family: Family, opts: Options, request: Request) -> comparison.Plan:
    """The builds' configuration, the node schedule and the bisection (the model's settings)."""
    defaults = _defaults(family, opts)
    delta = request.score_target_difference
    delta = defaults.get("score_target_difference", 0.001) if delta is None else delta
    out = comparison.Plan(pipeline.BuildConfig(**family.build_defaults(opts)),
                          ablation.schedule_for(defaults), ablation.Bisect(delta, "linear", 1))
    out.validate()
    return out


def run(family: Family, opts: Options, request: Request, out_dir) -> tuple[dict, list[str],
                                                                          list[Path]]:
    """Build, ablate and summarise both bases into ``out_dir``; returns the summary (also in
    ``comparison.json``), the Markdown table (``table.md``) and the figures written."""
    defaults = _defaults(family, opts)
    the_plan = plan(family, opts, request)
    eval_opts = dataclasses.replace(opts, split=request.split or defaults["split"],
                                    n_samples=request.n_eval_samples or defaults.get("n_samples"),
                                    dtype="float32")
    node_layers = family.node_layers(opts)
    data = family.data(opts)
    build_info = {"data": data.source, "n_samples": len(data.inputs),
                  "n_gram_samples": len(data.gram_inputs)}
    eval_data = family.evaluation_data(eval_opts, build_info, request.eval_data_dir)
    ev = ablation.Evaluator(family.load(eval_opts, node_layers), eval_data.inputs,
                            eval_data.labels, defaults["metric"], defaults["batch_size"],
                            np.float32)
    out_dir = Path(out_dir)
    model_id = family.model_id(opts)
    where = (eval_data.source or {}).get("evaluation_data") or f"{eval_opts.split} split"
    common = {"model": family.name, "checkpoint": model_id, "dataset": opts.dataset,
              "data_dir": opts.data_dir, "split": eval_opts.split,
              "n_samples": len(eval_data.inputs), **(eval_data.source or {})}
    outcomes = comparison.compare(family.load(opts, node_layers), data.inputs, ev, the_plan,
                                  out_dir, common=common, gram_inputs=data.gram_inputs,
                                  model_id=model_id, rerun=request.rerun,
                                  overwrite=request.overwrite, data_record=data.source)
    summary = comparison.summarize(outcomes, the_plan.bisect.score_target_difference,
                                   family.sections(node_layers))
    summary.update(common, n_build_samples=len(data.inputs))
    title = f"{Path(model_id.split('#')[0]).stem}, {where} ({len(eval_data.inputs)} samples)"
    paths = comparison.plot(outcomes, out_dir, title=title, summary=summary)
    lines = [f"# LIB against PCA: {family.name} {model_id}", "",
             f"Graphs built on {len(data.inputs)} samples (float64); ablations on "
             f"{len(eval_data.inputs)} samples ({where}, float32), {summary['metric']}; "
             f"unablated {summary['no_ablation_result']:.4f}.", ""]
    lines += comparison.layer_table(summary)
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    files.write_json_atomic(out_dir / "comparison.json", summary)
    return summary, lines, paths


def report(lines: list[str], paths: list[Path], out_dir) -> None:
    """Print :func:`run`'s table and the files it wrote."""
    print("\n".join(lines))
    print(f"written to {out_dir}: table.md, comparison.json, "
          + ", ".join(p.name for p in paths))
