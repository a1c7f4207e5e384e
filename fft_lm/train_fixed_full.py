"""`python -m fft_lm.train_fixed_full`: the original pipeline's command name (a fixed context, the full run).

The defaults are the small `tiny` preset (256-byte context); the original pipeline's sizes (1024 context,
128 taps) are `--preset 29m`, or `--seq-len 1024 --kernel-len 128` with any preset.

Same flags as fft_lm.train (see `--help`); works under `torchrun --nproc_per_node N -m fft_lm.train_fixed_full`.
"""
from fft_lm.train import main

if __name__ == "__main__":
    main()
