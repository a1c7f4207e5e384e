"""`python -m fft_lm.train_fixed_full`: the seed's training command (fixed 1024-byte context, full run).

Same flags as fft_lm.train (see `--help`); works under `torchrun --nproc_per_node N -m fft_lm.train_fixed_full`.
"""
from fft_lm.train import main

if __name__ == "__main__":
    main()
