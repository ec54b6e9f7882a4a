"""The project's own tests (harness, mutants, reference-only behaviour)."""

import torch

# Tiny tensors: one thread is faster than several on a small CPU (see specs/__init__.py).
torch.set_num_threads(1)
