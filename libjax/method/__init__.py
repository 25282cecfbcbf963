"""The method itself, model-agnostic: statistics (:mod:`.stats`), integration rules
(:mod:`.integration`), probes (:mod:`.probes`) and the general VJP path of M' and the edges
(:mod:`.vjp`). The basis algebra is :mod:`libjax.basis`."""
