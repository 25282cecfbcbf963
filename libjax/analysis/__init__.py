"""libjax.analysis."""
