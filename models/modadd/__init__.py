"""The modular-addition transformer: model and data (:mod:`.model`), Fourier reading of its
directions (:mod:`.fourier`), its ``--model`` family (:mod:`.family`)."""
