"""libjax.runtime."""
