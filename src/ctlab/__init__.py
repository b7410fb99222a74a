"""ctlab: make and study small Chinese-centric language models, from raw web data onwards."""

import logging

__version__ = "0.1.0"

# torchao (where installed: the tests' reference for int8/fp8 weights) logs on import the CUDA
# kernels a CPU build lacks, and torch warns about the Enum types it registers; transformers
# imports it whenever it loads a model.
# Nothing in either is for a ctlab user to act on.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
