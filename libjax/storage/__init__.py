"""libjax.storage."""
