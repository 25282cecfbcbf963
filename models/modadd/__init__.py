"""models.modadd.model.model."""
