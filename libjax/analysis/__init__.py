"""Reading graphs: LIB against PCA (:mod:`.comparison`), figures (:mod:`.plots`), agreement with
the reference implementation's numbers (:mod:`.reference`)."""
