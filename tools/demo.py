"""``just demo``: run every operator present in the workspace on a small realistic problem,
check it against its PyTorch reference and print one table."""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

from tri_shared.demo import main

OPERATOR_MODULES = ["tri_shared", "gated_delta", "flash_attn_tri", "indexer_loss"]

if __name__ == "__main__":
    sys.exit(main(OPERATOR_MODULES))
