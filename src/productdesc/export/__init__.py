"""Export a model as one GGUF file (llama.cpp, Ollama, LM Studio), offline and only on request.

Unsloth's ``save_pretrained_gguf`` clones and builds llama.cpp, installing system packages
with it, so productdesc never calls it. This module writes the file itself with the ``gguf``
package (llama.cpp's own Python library: its writer, its tensor-name map and its tokenizer
readers), for the Llama architecture that TinyLlama, SmolLM2 and Llama 2/3 share:

* the weights of a merged or plain model directory (safetensors), with q/k rows reordered
  for llama.cpp's rotary layout, as llama.cpp's ``convert_hf_to_gguf.py`` does;
* the hyperparameters from ``config.json``;
* the tokenizer (GPT-2-style BPE, Llama's byte-fallback BPE, or SentencePiece), its special
  tokens, merges and chat template, and the pre-tokenizer's name, found as llama.cpp's
  converter finds it.

K-quants (``q4_k_m``, ``q5_k_m``) are made from an ``f16`` file with llama.cpp's
``llama-quantize``: the ``gguf`` package has no quantizer for them.

A training output with only an adapter is merged into its base first. Any other architecture
gets a clear error that points to llama.cpp's converter, run from a local checkout.

Beside the file goes an Ollama ``Modelfile`` (:data:`MODELFILE`): ``FROM`` the file, the run's
prompt as ``TEMPLATE`` (:meth:`~productdesc.prompts.BaseTemplate.ollama_template`), a ``stop``
for each end token, and the describer's decoding defaults that Ollama has settings for.

>>> from productdesc.export import export_gguf  # doctest: +SKIP
>>> export_gguf("run/", "run/model-f16.gguf")         # doctest: +SKIP
"""

from productdesc.export.gguf import OUTTYPES, export_gguf
from productdesc.export.modelfile import MODELFILE, modelfile

__all__ = ["MODELFILE", "OUTTYPES", "export_gguf", "modelfile"]
