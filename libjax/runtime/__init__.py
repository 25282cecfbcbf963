"""Where and how a build runs: devices and hosts (:mod:`.sharding`), fixed-shape batches
(:mod:`.batching`), memory budgets (:mod:`.memory`), progress lines (:mod:`.progress`) and the
command-line wrapper (:mod:`.cli`)."""
