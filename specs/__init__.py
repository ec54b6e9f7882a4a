"""Executable specs: one file per component, run against exercises, solutions and reference."""

import torch

# Specs run on tiny tensors, where thread start-up costs more than it gives on a small CPU
# (measured 4-7x slower with 2 threads on 2 shared cores). Benchmarks are unaffected.
torch.set_num_threads(1)
