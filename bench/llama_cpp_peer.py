"""llama.cpp as a peer of our 8-bit decoding: batch-1 greedy decoding of a random-weight model at Q8_0, through
``llama-cpp-python``, with as many weights as our model of the same size (``bench/decode.py`` runs it).

The model is written with the ``gguf`` package: llama.cpp has no RWKV-4 architecture, so it is a ``llama`` model of
the same width, depth, vocabulary and weight count (RWKV-4 blocks hold 13·d² weights: time mix 4·d², channel mix
d² + 2·4·d²; a llama block 4·d² of attention and 3·d·f of feed-forward, so f = 3·d), untied embedding and head,
``no_vocab`` (token ids go in directly). Q8_0 stores 32 int8 weights and one fp16 scale in 34 bytes, llama.cpp's
8-bit format. Attention reads a key-value cache that grows with the position; decoding stays within the first
``--tokens`` + 16 positions, where that cache is a few percent of the weights' bytes (reported).

Prints one JSON object: tokens/s (median and best), the bytes read per token (weights but the embedding, one
embedding row, the cache at the last position). Run in a process of its own: a crash of the library (llama.cpp's
AMX buffer type fails on some virtual machines) then costs one measurement, and ``--no-extra-buffers`` retries
without its repacked weight buffers.

    python bench/llama_cpp_peer.py --layers 12 --width 768 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

HEAD_DIM = 64
Q8_0_BLOCK, Q8_0_BYTES = 32, 34  # weights per block, bytes per block (32 int8 + an fp16 scale)


def write_gguf(path: Path, n_layer: int, d: int, vocab: int, context: int) -> int:
    """A random-weight llama model at Q8_0 (norms in fp32); returns the bytes a decoding step reads from its
    weights: every tensor but the embedding, and one embedding row."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    writer = gguf.GGUFWriter(str(path), "llama")
    heads = max(1, d // HEAD_DIM)
    writer.add_context_length(max(context, 4096))
    writer.add_embedding_length(d)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(3 * d)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(d // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("no_vocab")
    writer.add_vocab_size(vocab)
    rng = np.random.default_rng(0)
    read = 0

    def q8(name: str, rows: int, cols: int, whole: bool = True) -> None:
        nonlocal read
        data = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
        writer.add_tensor(name, gguf.quants.quantize(data, Q.Q8_0), raw_dtype=Q.Q8_0)
        read += (rows if whole else 1) * cols // Q8_0_BLOCK * Q8_0_BYTES

    def norm(name: str) -> None:
        nonlocal read
        writer.add_tensor(name, np.ones(d, dtype=np.float32))
        read += 4 * d

    q8("token_embd.weight", vocab, d, whole=False)
    for i in range(n_layer):
        norm(f"blk.{i}.attn_norm.weight")
        norm(f"blk.{i}.ffn_norm.weight")
        for name in ("q", "k", "v", "output"):
            q8(f"blk.{i}.attn_{name}.weight", d, d)
        q8(f"blk.{i}.ffn_gate.weight", 3 * d, d)
        q8(f"blk.{i}.ffn_up.weight", 3 * d, d)
        q8(f"blk.{i}.ffn_down.weight", d, 3 * d)
    norm("output_norm.weight")
    q8("output.weight", vocab, d)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return read


def load(path: Path, threads: int, context: int, extra_buffers: bool):
    import llama_cpp
    import llama_cpp.llama as llama_module

    if not extra_buffers:  # the wrapper does not expose it: start from default parameters that turn it off
        defaults = llama_cpp.llama_model_default_params

        def without_extra_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
    return llama_cpp.Llama(
        str(path), n_ctx=context, n_batch=16, n_threads=threads, n_threads_batch=threads, verbose=False
    )


def greedy(llm) -> int:
    """The most likely next token after the last ``eval``, read from the context's own logits: ``Llama.scores`` is
    written only with ``logits_all`` (and has ``n_batch`` rows without it)."""
    from llama_cpp import llama_cpp as api

    logits = np.ctypeslib.as_array(api.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def measure(args: argparse.Namespace) -> dict:
    context = args.tokens + args.warmup + 16
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model_file or Path(tmp) / "q8_0.gguf")
        read_path = path.with_suffix(".bytes")
        if not path.is_file():  # (a file from an earlier call of the same size is reused)
            read_path.write_text(str(write_gguf(path, args.layers, args.width, args.vocab, context)))
        weight_bytes = int(read_path.read_text())
        llm = load(path, args.threads, context, not args.no_extra_buffers)
        llm.eval([1, 2, 3])
        token = greedy(llm)
        times = []
        for step in range(args.warmup + args.tokens):
            started = time.perf_counter()
            llm.eval([token])
            token = greedy(llm)
            if step >= args.warmup:
                times.append(time.perf_counter() - started)
        positions = llm.n_tokens
    cache_bytes = 2 * args.layers * args.width * 2 * positions  # keys and values, fp16, at the last position
    return {
        "tok_s": 1 / statistics.median(times),
        "best_tok_s": 1 / min(times),
        "weight_bytes_per_token": weight_bytes,
        "cache_bytes_at_last_token": cache_bytes,
        "bytes_per_token": weight_bytes + cache_bytes,
        "extra_buffers": not args.no_extra_buffers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, required=True, help="blocks")
    parser.add_argument("--width", type=int, required=True, help="embedding width d")
    parser.add_argument("--vocab", type=int, default=50277, help="vocabulary (default: 50277)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default: 1)")
    parser.add_argument("--tokens", type=int, default=48, help="decoding steps timed (default: 48)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (default: 4)")
    parser.add_argument(
        "--model-file",
        default=None,
        help="where to write the model, or read it if it is there from an earlier call with the same size "
        "(default: a temporary file)",
    )
    parser.add_argument(
        "--no-extra-buffers",
        action="store_true",
        help="load without llama.cpp's extra buffer types (repacked weights, AMX)",
    )
    print(json.dumps(measure(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
