"""Generation: from a trained model to answers.

* :mod:`~productdesc.generation.describer`: :class:`Describer`, the public face (prompts in,
  answers out, batching, streaming, the choice of path);
* :mod:`~productdesc.generation.static_decoder`: the CUDA fast path's greedy decoder (static KV
  cache, CUDA graphs), which knows models and tensors, not prompts;
* :mod:`~productdesc.generation.fusion`: what that decoder changes in a model (attention over
  the grouped cache, fused projections), and :mod:`~productdesc.generation.fused_decode`, the
  Triton kernel of a decode step's attention;
* :mod:`~productdesc.generation.compile_cache`: where torch keeps what ``torch_compile``
  compiles;
* :mod:`~productdesc.generation.hybrid`: copy the nearest known description when retrieval is
  confident, generate otherwise.

Nothing here imports torch at import time.
"""

from productdesc.generation.describer import Describer, Description, evolve_generation
from productdesc.generation.hybrid import HybridDescriber

__all__ = ["Describer", "Description", "HybridDescriber", "evolve_generation"]
