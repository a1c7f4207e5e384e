r"""Generate bytes from any fft_lm checkpoint with exact overlap-save streaming.

    python -m scripts.generate_chunked_overlap_save --ckpt runs/chunk.pt --prompt "The " \
        --seq-len 1024 --kernel-len 128 --chunk 16 --chunks 32

Each layer keeps only the state it needs (conv models: the last kernel_len-1 inputs of each
convolution; GPT: its KV cache), so a step costs the same however long the context, including
past --seq-len. Greedy output is byte-identical to scripts.generate_chunked (full recompute).

--seq-len, --kernel-len and --chunk are checks against the checkpoint (the original pipeline
passed them by hand): they cannot change a trained model, and a mismatch is an error. Leave them out to use the
checkpoint's values. For byte-at-a-time models --chunk only sets the unit of --chunks.
"""
import argparse

from scripts import _cli_common as cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_generation_args(parser)
    parser.add_argument("--seq-len", type=int, default=None, help="check: the checkpoint's training context")
    parser.add_argument("--kernel-len", type=int, default=None, help="check: the checkpoint's conv kernel length")
    parser.add_argument("--chunk", type=int, default=None,
                        help="check: the ChunkLM's chunk (for other models: bytes per --chunks unit)")
    args = parser.parse_args(argv)
    prompt = cli.read_prompt(parser, args)
    model, _ = cli.load_model(parser, args)
    cli.check_shape_flags(parser, args, model)
    cli.check_chunk(parser, args, model)
    n_new = cli.new_byte_count(parser, args, model, args.chunk)
    out = cli.run_generation(parser, args, model, prompt, n_new, mode="overlap_save")
    cli.write_output(args, prompt, out)


if __name__ == "__main__":
    main()
