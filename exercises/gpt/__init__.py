"""The GPT component: a GPT-2-class model written as functions of a dict of weights.

Modules, in the order to work through them:

* ``layers.py``: LayerNorm and GELU;
* ``positional.py``: the original transformer's sinusoidal positional encoding;
* ``block.py``: the MLP and the pre-LN transformer block (uses ``solutions.attention``);
* ``model.py``: the full forward pass with its loss, GPT-2 initialisation, parameter count;
* ``sampling.py``: temperature, top-k, top-p and the generation loop.

Run ``pytest exercises -m gpt`` to check your work.
"""

from reference.model import GPTConfig  # given: the library's model config

from .block import block_forward, mlp_forward
from .layers import gelu, layer_norm
from .model import check_idx, count_parameters, cross_entropy, gpt_forward, init_params
from .positional import sinusoidal_positional_encoding
from .sampling import generate, sample_next_token, top_k_filter, top_p_filter

__all__ = [
    "GPTConfig",
    "block_forward",
    "check_idx",
    "count_parameters",
    "cross_entropy",
    "gelu",
    "generate",
    "gpt_forward",
    "init_params",
    "layer_norm",
    "mlp_forward",
    "sample_next_token",
    "sinusoidal_positional_encoding",
    "top_k_filter",
    "top_p_filter",
]
