"""A build on disk: staged, atomic, resumable results (:mod:`.store`) and the graph read back
(:mod:`.graph`)."""
