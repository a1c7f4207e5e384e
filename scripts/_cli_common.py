"""Shared pieces of the generation scripts: flags, prompt input, checkpoint loading, output."""
import argparse
import sys
import time

import torch

DEFAULT_CHUNK = 16  # bytes per --chunks unit for byte-at-a-time models


def add_generation_args(parser: argparse.ArgumentParser):
    parser.add_argument("--ckpt", required=True, help="checkpoint written by any fft_lm training script")
    src = parser.add_argument_group("prompt (default: empty prompt)")
    src.add_argument("--prompt", default=None,
                     help="prompt text (UTF-8); '-' reads the prompt bytes from stdin")
    src.add_argument("--prompt-file", default=None, help="read the prompt bytes from this file")
    n = parser.add_argument_group("length (give one; default --chunks 16)")
    n.add_argument("--chunks", type=int, default=None,
                   help="generate this many chunks: chunk = the ChunkLM's chunk, or --chunk bytes for "
                        "byte-at-a-time models")
    n.add_argument("--max-new-bytes", type=int, default=None, help="generate exactly this many bytes")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely bytes (1..256)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same bytes)")
    parser.add_argument("--raw", action="store_true", help="write raw bytes instead of UTF-8 text")
    parser.add_argument("--no-echo", action="store_true", help="write only the new bytes, not the prompt")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="step eagerly on CUDA instead of replaying CUDA graphs (same bytes, slower)")


def fail(parser, message):
    parser.error(message)  # prints usage + message to stderr, exits with status 2


def read_prompt(parser, args) -> bytes:
    if args.prompt is not None and args.prompt_file is not None:
        fail(parser, "give --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, "rb") as f:
                return f.read()
        except OSError as e:
            fail(parser, f"--prompt-file: cannot read {args.prompt_file!r}: {e.strerror}")
    if args.prompt == "-":
        return sys.stdin.buffer.read()
    if args.prompt is not None:
        # surrogateescape gives back the exact bytes of a non-UTF-8 command-line argument
        return args.prompt.encode("utf-8", errors="surrogateescape")
    return b""


def load_model(parser, args):
    from fft_lm.checkpoint import load_checkpoint
    from fft_lm.device import resolve_device
    try:
        device = resolve_device(args.device, allow_auto=False)
    except ValueError as e:
        fail(parser, str(e))
    try:
        model, meta = load_checkpoint(args.ckpt)
    except FileNotFoundError:
        fail(parser, f"--ckpt: no such file {args.ckpt!r}")
    except (ValueError, RuntimeError, OSError) as e:
        fail(parser, f"--ckpt: cannot load {args.ckpt!r}: {e}")
    return model.to(device).eval(), meta


def model_chunk(model):
    from fft_lm.generation import is_chunk_model
    return model.chunk if is_chunk_model(model) else None


def new_byte_count(parser, args, model, chunk_flag=None) -> int:
    if args.chunks is not None and args.max_new_bytes is not None:
        fail(parser, "give --chunks or --max-new-bytes, not both")
    if args.max_new_bytes is not None:
        if args.max_new_bytes < 0:
            fail(parser, f"--max-new-bytes must be >= 0, got {args.max_new_bytes}")
        return args.max_new_bytes
    chunks = 16 if args.chunks is None else args.chunks
    if chunks < 0:
        fail(parser, f"--chunks must be >= 0, got {chunks}")
    chunk = model_chunk(model) or chunk_flag or DEFAULT_CHUNK
    return chunks * chunk


def run_generation(parser, args, model, prompt, n_new, mode):
    from fft_lm.generation import generate
    t0 = time.perf_counter()
    try:
        out = generate(model, prompt, n_new, mode=mode, temperature=args.temperature,
                       top_k=args.top_k, seed=args.seed, cuda_graphs=False if args.no_cuda_graphs else None)
    except (TypeError, ValueError) as e:
        fail(parser, str(e))
    dt = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    print(f"[{type(model).__name__} {params / 1e6:.2f}M params, mode={mode}] prompt {len(prompt)} bytes, "
          f"generated {len(out)} bytes in {dt:.2f}s ({len(out) / max(dt, 1e-9):.0f} bytes/s)", file=sys.stderr)
    return out


def write_output(args, prompt, out):
    data = out if args.no_echo else prompt + out
    if not args.raw:
        data = data.decode("utf-8", errors="replace").encode("utf-8")
    sys.stdout.buffer.write(data)
    if not args.raw:
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


def _config_value(model, name):
    """A backbone config field (ChunkLM: its backbone's), or None when the family has no such field."""
    body = getattr(model, "backbone", model)
    return getattr(getattr(body, "config", None), name, None)


def check_shape_flags(parser, args, model):
    for flag, name in (("--seq-len", "seq_len"), ("--kernel-len", "kernel_len")):
        wanted = getattr(args, name)
        if wanted is None:
            continue
        have = _config_value(model, name)
        if have is None:
            fail(parser, f"{flag} {wanted}: a {type(model).__name__} checkpoint has no {name}; leave the flag out")
        if have != wanted:
            fail(parser, f"{flag} {wanted} does not match the checkpoint ({name}={have}); these flags only "
                         "check the checkpoint, they cannot change a trained model; leave the flag out or fix it")


def check_chunk(parser, args, model):
    if args.chunk is not None and args.chunk < 1:
        fail(parser, f"--chunk must be >= 1, got {args.chunk}")
    chunk = model_chunk(model)
    if args.chunk is not None and chunk is not None and args.chunk != chunk:
        fail(parser, f"--chunk {args.chunk} does not match the checkpoint's chunk={chunk}; "
                     "the chunk head was trained for that size; leave the flag out or fix it")
