"""models.common."""
