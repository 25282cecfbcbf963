"""Analyses of finished builds: activations in a basis, feature cards, clustering, the explorer."""
