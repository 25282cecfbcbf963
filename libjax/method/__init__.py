"""libjax.method."""
