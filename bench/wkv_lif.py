"""WKV and LIF kernels: Triton against the torch references and torch.compile, against the memory floor.

Parts (``--parts``, default all):

kernels     For each shape (B, T, C), op (wkv, lif) and pass (fwd, fwd+bwd): the median time of each implementation,
            its floor traffic / time in bytes/s, as a fraction of the device copy bandwidth measured in this run,
            and its speedup over the torch reference. Floor traffic: WKV forward reads k, v and writes y, its
            backward reads k, v, dy and writes dk, dv; LIF forward reads x and writes spikes, its backward reads
            x, d spikes and writes dx. Implementations: ``triton`` (CUDA only), ``reference`` (the torch path of
            the dispatch), ``compiled-step`` (the definition's token loop with its per-token step compiled by
            torch.compile: one fused kernel per token).
compile     torch.compile of the whole reference at small T: compile seconds and run time. Dynamo unrolls the
            loop over tokens, so compile time grows with T; this part measures how fast.
forms       Every torch form of WKV (sequential loop, chunked closed form at several chunk sizes, scan with a
            hand-written backward) and LIF (autograd loop, hand-written backward) at one shape, and how far
            each is from the sequential definition: which form the CPU path should use.
train-step  A training step (forward, backward, Adam) of a small SpikeGPT against the same WKV and LIF calls
            timed alone: the kernels' share of the step.

Prints one JSON object per measurement, then a summary object. Without CUDA only the torch implementations run,
and every record says that the GPU figures are missing.

    python bench/wkv_lif.py                                   # everything
    python bench/wkv_lif.py --parts kernels --shapes 8x1024x2048 --dtype bf16
    python bench/wkv_lif.py --parts forms,train-step
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time

import torch
from common import emit

from spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM
from spikegpt.kernels import lif, wkv
from spikegpt.kernels.lif_torch import lif_sequential, lif_step, lif_torch
from spikegpt.kernels.wkv_torch import wkv_chunked, wkv_scan, wkv_sequential, wkv_step, wkv_torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PARTS = ("kernels", "compile", "forms", "train-step")
GPU_MISSING = "missing: no CUDA device in this run; the Triton kernels and GPU figures need one"
# tensors of [B, T, C] elements each pass moves at least: reads + writes, forward and forward+backward
FLOOR_TENSORS = {("wkv", "fwd"): 3, ("wkv", "fwd+bwd"): 3 + 5, ("lif", "fwd"): 2, ("lif", "fwd+bwd"): 2 + 3}


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        batch, length, channels = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is BxTxC, e.g. 8x1024x512; got {text!r}") from None
    return batch, length, channels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Bytes read + written per second by a large device copy."""
    numel = (1 << 30 if device.type == "cuda" else 1 << 28) // 4
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src), device, repeats, warmup=2)


def wkv_args(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, length, channels = shape
    w = -torch.exp(torch.randn(channels, generator=g))
    u = torch.randn(channels, generator=g)
    k, v = (torch.randn(batch, length, channels, generator=g) for _ in range(2))
    return [t.to(device, dtype if t.dim() == 3 else torch.float32).requires_grad_() for t in (w, u, k, v)]


def lif_args(shape, dtype, device, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.5
    return [x.to(device, dtype).requires_grad_()]


def runner(fn, args, backward: bool):
    """A closure running ``fn(*args)``: without ``backward`` as inference (no autograd graph, nothing saved),
    with it followed by the gradient of every input (fresh, not accumulated) under fixed upstream gradients."""
    if not backward:
        return torch.no_grad()(lambda: fn(*args))
    upstream = [torch.randn_like(o) for o in fn(*args) if o.requires_grad]

    def run():
        produced = [o for o in fn(*args) if o.requires_grad]
        torch.autograd.grad(produced, args, upstream)

    return run


@functools.cache
def compiled_steps():
    return torch.compile(wkv_step, dynamic=False), torch.compile(lif_step, dynamic=False)


def implementations(op: str, device: torch.device, triton_configs) -> dict:
    wkv_compiled, lif_compiled = compiled_steps()
    if op == "wkv":
        impls = {"reference": wkv_torch, "compiled-step": functools.partial(wkv_sequential, step=wkv_compiled)}
    else:
        impls = {"reference": lif_torch, "compiled-step": functools.partial(lif_sequential, step=lif_compiled)}
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter: a smoke test
        from spikegpt.kernels.lif_triton import lif_triton
        from spikegpt.kernels.wkv_triton import wkv_triton

        kernel = wkv_triton if op == "wkv" else lif_triton
        for chunk, block_c in triton_configs:
            impls[f"triton[chunk={chunk},block_c={block_c}]"] = functools.partial(kernel, chunk=chunk, block_c=block_c)
    return impls


def flat(fn):
    def run(*args):
        out = fn(*args)
        return [out[0], *out[1]] if isinstance(out[1], tuple) else list(out)

    return run


@torch.no_grad()
def max_abs_diff(fn, tensors, want) -> float:
    """Largest difference between the forward outputs of ``fn`` and ``want`` (outputs of another form)."""
    return max((o.float() - d.float()).abs().max().item() for o, d in zip(flat(fn)(*tensors), want, strict=True))


def part_kernels(args, device, copy_bps) -> list[dict]:
    records = []
    dtype = DTYPES[args.dtype]
    for shape in args.shapes:
        numel = shape[0] * shape[1] * shape[2]
        for op, make_args in (("wkv", wkv_args), ("lif", lif_args)):
            tensors = make_args(shape, dtype, device)
            with torch.no_grad():
                want = flat(wkv_torch if op == "wkv" else lif_torch)(*tensors)
            for pass_name in ("fwd", "fwd+bwd"):
                floor = FLOOR_TENSORS[op, pass_name] * numel * dtype.itemsize
                times = {}
                for impl, fn in implementations(op, device, args.triton_configs).items():
                    if impl.split("[")[0] not in args.impls:
                        continue
                    run = runner(flat(fn), tensors, backward=pass_name == "fwd+bwd")
                    times[impl] = median_seconds(run, device, args.repeats, args.warmup)
                    record = {
                        "part": "kernels",
                        "op": op,
                        "impl": impl,
                        "pass": pass_name,
                        "shape": list(shape),
                        "dtype": args.dtype,
                        "device": device.type,
                        "ms": round(times[impl] * 1e3, 3),
                        "floor_bytes": floor,
                        "floor_gbps": round(floor / times[impl] / 1e9, 2),
                        "fraction_of_copy": round(floor / times[impl] / copy_bps, 4),
                    }
                    if "reference" in times:
                        record["speedup_vs_reference"] = round(times["reference"] / times[impl], 3)
                    if pass_name == "fwd" and impl != "reference":
                        record["max_abs_diff_vs_reference"] = max_abs_diff(fn, tensors, want)
                    if device.type != "cuda":
                        record["gpu"] = GPU_MISSING
                    records.append(emit(record))
    return records


def part_compile(args, device) -> list[dict]:
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False
    records = []
    with tempfile.TemporaryDirectory(prefix="spikegpt-bench-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # compile from scratch: nothing reused from earlier runs
        for length in args.compile_lengths:
            shape = (args.forms_shape[0], length, args.forms_shape[2])
            for op, fn, make_args in (("wkv", wkv_torch, wkv_args), ("lif", lif_torch, lif_args)):
                torch._dynamo.reset()
                run = runner(torch.compile(flat(fn)), make_args(shape, torch.float32, device), backward=True)
                start = time.perf_counter()
                run()
                sync(device)
                compile_s = time.perf_counter() - start
                reference = runner(flat(fn), make_args(shape, torch.float32, device), backward=True)
                record = {
                    "part": "compile",
                    "op": op,
                    "impl": "torch.compile(reference)",
                    "pass": "fwd+bwd",
                    "shape": list(shape),
                    "device": device.type,
                    "compile_and_first_run_s": round(compile_s, 2),
                    "ms": round(median_seconds(run, device, 3, 0) * 1e3, 3),
                    "reference_ms": round(median_seconds(reference, device, 3, 1) * 1e3, 3),
                }
                records.append(emit(record))
    return records


WKV_FORMS = {
    "sequential": wkv_sequential,
    **{f"chunked-{n}": functools.partial(wkv_chunked, chunk=n) for n in (4, 8, 16, 32)},
    "scan": wkv_scan,
}
LIF_FORMS = {"sequential": lif_sequential, "hand-written-backward": lif_torch}


def part_forms(args, device) -> list[dict]:
    records = []
    for op, forms, make_args in (("wkv", WKV_FORMS, wkv_args), ("lif", LIF_FORMS, lif_args)):
        tensors = make_args(args.forms_shape, torch.float32, device)
        with torch.no_grad():
            definition = flat(forms["sequential"])(*tensors)
        for pass_name in ("fwd", "fwd+bwd"):
            times = {}
            for name, fn in forms.items():
                with torch.no_grad():
                    outputs = flat(fn)(*tensors)
                error = max(
                    (o.float() - d.float()).abs().max().item() for o, d in zip(outputs, definition, strict=True)
                )
                run = runner(flat(fn), tensors, backward=pass_name == "fwd+bwd")
                times[name] = median_seconds(run, device, args.repeats, args.warmup)
                records.append(
                    emit(
                        {
                            "part": "forms",
                            "op": op,
                            "form": name,
                            "pass": pass_name,
                            "shape": list(args.forms_shape),
                            "device": device.type,
                            "ms": round(times[name] * 1e3, 3),
                            "speedup_vs_sequential": round(times["sequential"] / times[name], 2),
                            "max_abs_diff_vs_definition": error,
                        }
                    )
                )
    return records


def part_train_step(args, device) -> dict:
    layers, width, ctx, batch = args.train_model
    config = SpikeGPTConfig(vocab_size=256, n_layer=layers, n_embd=width, ctx_len=ctx, dropout=0.0)
    torch.manual_seed(0)
    model = SpikeGPTForCausalLM(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (batch, ctx), device=device)

    def step():
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_s = median_seconds(step, device, args.repeats, args.warmup)
    shape = (batch, ctx, width)
    wkv_s = median_seconds(runner(flat(wkv), wkv_args(shape, torch.float32, device), True), device, args.repeats, 1)
    lif_s = median_seconds(runner(flat(lif), lif_args(shape, torch.float32, device), True), device, args.repeats, 1)
    kernels_s = layers * wkv_s + 2 * layers * lif_s  # one WKV and two LIF layers per block
    return emit(
        {
            "part": "train-step",
            "model": {"n_layer": layers, "n_embd": width, "ctx_len": ctx, "batch": batch, "vocab_size": 256},
            "device": device.type,
            "step_ms": round(step_s * 1e3, 1),
            "wkv_fwd_bwd_ms_per_call": round(wkv_s * 1e3, 2),
            "lif_fwd_bwd_ms_per_call": round(lif_s * 1e3, 2),
            "kernel_calls": {"wkv": layers, "lif": 2 * layers},
            "kernels_ms": round(kernels_s * 1e3, 1),
            "kernels_share_of_step": round(kernels_s / step_s, 3),
        }
    )


def summarize(kernel_records, forms_records, device, copy_bps) -> dict:
    summary = {"part": "summary", "device": device.type, "copy_gbps": round(copy_bps / 1e9, 1)}
    if forms_records:
        fastest = {}
        for record in forms_records:
            if record["pass"] == "fwd+bwd":
                best = fastest.get(record["op"])
                if best is None or record["ms"] < best["ms"]:
                    fastest[record["op"]] = record
        summary["fastest_cpu_form_fwd_bwd"] = {op: r["form"] for op, r in fastest.items()}
    if device.type != "cuda":
        summary["gpu"] = GPU_MISSING
        return summary
    goals = {}
    for record in kernel_records:  # the best Triton configuration per op and shape
        if not record["impl"].startswith("triton") or record["pass"] != "fwd+bwd" or record["dtype"] != "fp32":
            continue
        key = f"{record['op']} {'x'.join(map(str, record['shape']))}"
        if key not in goals or record["fraction_of_copy"] > goals[key]["fraction_of_copy"]:
            goals[key] = {
                "impl": record["impl"],
                "fraction_of_copy": record["fraction_of_copy"],
                "speedup_vs_reference": record.get("speedup_vs_reference"),
            }
    summary["triton_fwd_bwd_fp32"] = goals
    summary["goals"] = "WKV fwd+bwd >= 0.70 of copy and >= 3x reference at 8x1024x2048 fp32; LIF fwd+bwd >= 0.70"
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts to run, of {PARTS}")
    parser.add_argument(
        "--shapes",
        type=lambda text: [parse_shape(s) for s in text.split(",")],
        default=[(8, 1024, 512), (8, 1024, 2048), (1, 4096, 768)],
        help="kernels part: comma-separated BxTxC shapes (default 8x1024x512,8x1024x2048,1x4096x768)",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="kernels part: storage type of k, v, x")
    parser.add_argument(
        "--impls",
        type=lambda text: text.split(","),
        help="kernels part: implementations to time, of triton (CUDA only), reference, compiled-step "
        "(default: all three on CUDA; the reference on a CPU, where the compiled step's backward takes minutes "
        "at these shapes)",
    )
    parser.add_argument(
        "--triton-configs",
        type=lambda text: [tuple(int(n) for n in c.split("x")) for c in text.split(",")],
        default=[(16, 64)],
        help="kernels part: Triton launch configurations CHUNKxBLOCK_C to time, comma-separated (default 16x64: "
        "checkpoint every 16 tokens, 64 channels per program)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    parser.add_argument(
        "--compile-lengths",
        type=lambda text: [int(t) for t in text.split(",")],
        default=[16, 64],
        help="compile part: sequence lengths T at which to compile the whole reference (B, C from --forms-shape)",
    )
    parser.add_argument(
        "--forms-shape", type=parse_shape, default=(16, 256, 256), help="forms part: BxTxC (default 16x256x256)"
    )
    parser.add_argument(
        "--train-model",
        type=lambda text: tuple(int(t) for t in text.split(",")),
        default=(6, 256, 256, 8),
        help="train-step part: layers,width,ctx_len,batch (default 6,256,256,8)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="CPU threads for torch (default: torch's choice). On a machine shared with other jobs, 1 avoids "
        "timing the wait for a descheduled worker thread at every parallel operation",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    device = torch.device(args.device)
    if args.impls is None:
        args.impls = ["triton", "reference", "compiled-step"] if device.type == "cuda" else ["reference"]
    copy_bps = copy_bandwidth(device, args.repeats)
    emit({"part": "device", "device": device.type, "name": device_name(device), "copy_gbps": round(copy_bps / 1e9, 1)})
    kernel_records = part_kernels(args, device, copy_bps) if "kernels" in parts else []
    if "compile" in parts:
        part_compile(args, device)
    forms_records = part_forms(args, device) if "forms" in parts else []
    if "train-step" in parts:
        part_train_step(args, device)
    emit(summarize(kernel_records, forms_records, device, copy_bps))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
