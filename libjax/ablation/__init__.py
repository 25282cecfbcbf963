"""libjax.ablation.evaluator.evaluator."""
