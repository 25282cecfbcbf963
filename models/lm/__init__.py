"""models.lm.model.model."""
