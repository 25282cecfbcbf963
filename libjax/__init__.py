"""libjax: the Local Interaction Basis (LIB, arXiv 2405.10928) in JAX.

Importing libjax turns on float64 (``jax_enable_x64``) and full-precision matmuls
(``jax_default_matmul_precision="highest"``, i.e. no TF32 or bf16 passes on accelerators):
LIB is numerically delicate (eigenvalues spanning 20 orders of magnitude) and every build
accumulates in float64. Arrays created with an explicit dtype are unaffected.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_default_matmul_precision", "highest")

__version__ = "0.1.0"


def __getattr__(name):
    """``libjax.explore``, imported on first use so that ``import libjax`` stays cheap."""
    if name == "explore":
        from libjax.analysis.explorer import explore
        return explore
    raise AttributeError(f"module 'libjax' has no attribute {name!r}")
