"""MLPs on images: model, folding and checkpoints (:mod:`.model`), training (:mod:`.training`),
the ``--model=mlp`` family (:mod:`.family`)."""
