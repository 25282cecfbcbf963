"""libjax.forms."""
