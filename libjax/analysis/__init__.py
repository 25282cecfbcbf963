"""Reading finished builds: activations in a basis, feature cards, clustering and the explorer;
LIB against PCA (:mod:`.comparison`), figures (:mod:`.plots`), agreement with the reference
implementation's numbers (:mod:`.reference`)."""
