"""Generate bytes from any fft_lm checkpoint by full recompute (the whole context every step).

    python -m scripts.generate_chunked --ckpt runs/chunk.pt --prompt "The " --chunks 8
    echo -n "The " | python -m scripts.generate_chunked --ckpt runs/chunk.pt --prompt - --max-new-bytes 200

A ChunkLM emits its `chunk` bytes per backbone pass; other families one byte per pass.
See scripts.generate_chunked_overlap_save for the streaming version (same output, cost flat in context).
"""
import argparse

from scripts import _cli_common as cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_generation_args(parser)
    parser.add_argument("--chunk", type=int, default=None,
                        help="bytes per --chunks unit; for a ChunkLM it must equal the checkpoint's chunk")
    args = parser.parse_args(argv)
    prompt = cli.read_prompt(parser, args)
    model, _ = cli.load_model(parser, args)
    cli.check_chunk(parser, args, model)
    n_new = cli.new_byte_count(parser, args, model, args.chunk)
    out = cli.run_generation(parser, args, model, prompt, n_new, mode="recompute")
    cli.write_output(args, prompt, out)


if __name__ == "__main__":
    main()
