"""`python -m scripts.train_fixed_full`: the original pipeline's script name for fft_lm.train_fixed_full
(same CLI)."""
from fft_lm.train import main

if __name__ == "__main__":
    main()
