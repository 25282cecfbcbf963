"""models.mlp.model.model."""
