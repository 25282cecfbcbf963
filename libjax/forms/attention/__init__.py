"""libjax.forms.attention."""
