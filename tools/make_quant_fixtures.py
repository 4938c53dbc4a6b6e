#!/usr/bin/env python3
"""Regenerates the bitsandbytes golden files in tests/fixtures/quant/ (read by tests/quant/*_test.cpp).

Uses the REAL bitsandbytes on the CPU. Which code ran (bitsandbytes 0.50.2, torch 2.x, x86-64):
  * quantize_4bit        -> "default" backend (pure torch: absmax, x * (1/absmax), bucketize on code midpoints;
                            a partial last block is divided by its absmax clamped to >= 1e-38).
  * dequantize_4bit      -> the goldens hold bitsandbytes' torch "default" kernel (f32(code[q] * absmax), rounded
                            to the output dtype), the definition every backend shares. The CPU library kernel
                            (used when the last dim is even and, on AVX512, the block < 2048) is compared with it
                            and differences are recorded in each file's metadata (see dequant_all).
  * quantize_blockwise   -> libbitsandbytes_cpu.so (cquantize_blockwise_cpu_*): a 65536-entry lookup table over
                            [-1, 1], NOT the exact nearest code (the CUDA kernel's binary search differs near
                            code midpoints, so CUDA-made goldens would differ there).
  * dequantize_blockwise -> libbitsandbytes_cpu.so: f32(code[q] * absmax).
  * double quant offset  -> torch.mean of the f32 absmax on the CPU (cascade sum, 8-wide vectors; one thread
                            for < 32768 blocks).
  * int8_vectorwise_quant / int8_mixed_scaled_mm -> "default" backend (pure torch).
bitsandbytes' CUDA kernels would give different bytes in places (FP4 sign of tiny values and the 0.583333f
threshold in dQuantizeFP4, binary search instead of the LUT for 8-bit, CUDA torch.mean for the offset), so
these goldens are CPU goldens; dequantized values agree up to the sign of zero. The CUDA goldens come from
tools/make_quant_cuda_fixtures.py (run on a GPU) and check quant/bnb_cuda_rules.h.
Run: python3 tools/make_quant_fixtures.py  (CPU only; writes ~1 MB of small safetensors files).
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def dequant_all(q, state):
    """Dequantized outputs in f32, bf16 and f16, from bitsandbytes' reference (torch "default") 4-bit kernel.

    The CPU library kernel is run too and any disagreement is returned as notes: bitsandbytes 0.50.2's AVX512
    path indexes absmax per row (absmax[row * (cols // blocksize) + ...]) and so uses the wrong scales when the
    last dim is not a multiple of the block size (e.g. [128, 96] in blocks of 128), and its scalar path returns
    -0.0 for FP4 code 8 where the code book (and the torch kernel) has +0.0.
    """
    out, notes = {}, {}
    absmax = state.absmax
    if state.nested:
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    code = _get_4bit_code(state.quant_type, q.device)
    keep = state.dtype
    for name, dt in DTYPES.items():
        ref = _dequantize_4bit_compute(q.reshape(-1), absmax, code, state.blocksize, state.shape, dt).contiguous()
        state.dtype = dt
        lib = F.dequantize_4bit(q, state).contiguous()
        bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dt]
        differ = lib.view(bits) != ref.view(bits)
        if differ.any():
            zero_sign = (differ & (lib == 0) & (ref == 0)).sum().item()
            notes["bnb_cpu_kernel_differs_" + name] = (
                f"{differ.sum().item()} of {ref.numel()} elements ({zero_sign} only in the sign of zero)")
        out["dq_" + name] = ref
    state.dtype = keep
    return out, notes


def make_4bit(outdir, idx, shape, dtype, qt, bs, dq, seed, special=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * (0.02 + 3.0 * torch.rand(1, generator=g).item())
    if special == "zero_blocks":  # first block and the partial last block all zero
        flat = x.view(-1)
        flat[:bs] = 0
        flat[-(flat.numel() % bs or bs):] = 0
    if special == "ties":  # values on code midpoints (times a power of two absmax)
        code = F.get_4bit_type(qt, device="cpu")
        sc = torch.sort(code).values
        mids = (sc[:-1] + sc[1:]) / 2
        flat = x.view(-1)
        flat[0::bs] = 4.0  # absmax of every block is exactly 4
        pick = torch.randint(0, mids.numel(), (flat.numel(),), generator=g)
        keep = torch.arange(flat.numel()) % bs != 0
        flat[keep] = (mids[pick] * 4.0)[keep]
    x = x.to(DTYPES[dtype])
    q, st = F.quantize_4bit(x, blocksize=bs, quant_type=qt, compress_statistics=dq)
    t = {"input": x.contiguous(), "packed": q.contiguous(), "code": st.code.contiguous()}
    if dq:
        t["absmax_u8"] = st.absmax.contiguous()
        t["nested_absmax"] = st.state2.absmax.contiguous()
        t["nested_code"] = st.state2.code.contiguous()
        t["offset"] = st.offset.reshape(1).float().contiguous()
    else:
        t["absmax"] = st.absmax.contiguous()
    dq_out, notes = dequant_all(q, st)
    t.update(dq_out)
    meta = {"kind": "q4", "quant_type": qt, "blocksize": str(bs), "double_quant": str(int(dq)),
            "dtype": dtype, "shape": json.dumps(list(shape)), **notes}
    for k, v in notes.items():
        print(f"q4_{idx:02d} {list(shape)} {qt} bs={bs}: {k}: {v}")
    save_file(t, os.path.join(outdir, f"q4_{idx:02d}.safetensors"), metadata=meta)


def make_8bit(outdir, idx, n, dtype, bs, signed, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 2.0
    if not signed:
        x = x.abs()
    x[: min(bs, n) // 2] *= 1e-3  # small values use the fine end of the dynamic map
    x = x.to(DTYPES[dtype])
    code = F.create_dynamic_map(signed=signed)
    q, st = F.quantize_blockwise(x, code=code, blocksize=bs)
    t = {"input": x.contiguous(), "q": q.contiguous(), "absmax": st.absmax.contiguous(), "code": code}
    for name, dt in DTYPES.items():
        st.dtype = dt
        t["dq_" + name] = F.dequantize_blockwise(q, st).contiguous()
    meta = {"kind": "q8", "blocksize": str(bs), "signed": str(int(signed)), "dtype": dtype}
    save_file(t, os.path.join(outdir, f"q8_{idx:02d}.safetensors"), metadata=meta)


def make_int8(outdir, idx, m, k, n, dtype, threshold, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g)
    outlier_cols = torch.randint(0, k, (max(1, k // 8),), generator=g)
    if threshold > 0:
        a[:, outlier_cols] = 6.0 + 2.0 * torch.rand(m, outlier_cols.numel(), generator=g)
    w = torch.empty(n, k)
    torch.nn.init.xavier_uniform_(w, generator=g)
    bias = torch.randn(n, generator=g)
    a, w, bias = a.to(DTYPES[dtype]), w.to(DTYPES[dtype]), bias.to(DTYPES[dtype])
    ca, sca, cols = F.int8_vectorwise_quant(a.clone(), threshold=threshold)
    cb, scb, _ = F.int8_vectorwise_quant(w.clone())
    out, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(a, ca, cb, sca, scb, cols, bias)
    t = {"a": a, "w": w, "bias": bias, "ca": ca, "sca": sca, "cb": cb, "scb": scb, "out": out.contiguous(),
         "outlier_cols": (cols if cols is not None else torch.empty(0, dtype=torch.int64)).to(torch.int64)}
    meta = {"kind": "int8", "threshold": repr(float(threshold)), "dtype": dtype}
    save_file(t, os.path.join(outdir, f"int8_{idx:02d}.safetensors"), metadata=meta)


def make_format(outdir, idx, shape, dtype, qt, bs, dq, seed):
    """A transformers-style state dict entry set for one Linear weight (prefix 'model.w.weight')."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 0.05).to(DTYPES[dtype])
    q, st = F.quantize_4bit(x, blocksize=bs, quant_type=qt, compress_statistics=dq)
    t = {"model.w.weight": q.contiguous()}
    for key, val in st.as_dict(packed=True).items():
        t["model.w.weight." + key] = val.contiguous()
    dq_out, notes = dequant_all(q, st)
    t["expected_dequant"] = dq_out["dq_" + dtype]
    save_file(t, os.path.join(outdir, f"format_{idx:02d}.safetensors"), metadata={"kind": "format", **notes})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "quant"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # torch.mean's reduction order (double-quant offset) depends on the thread split
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(args.out, f))

    # (shape, dtype, quant_type, blocksize, double_quant, special)
    q4 = [
        ((64, 64), "f32", "nf4", 64, False, None),
        ((37, 50), "bf16", "nf4", 64, False, None),          # 1850: partial last block
        ((33, 17), "f16", "fp4", 32, False, None),           # odd numel and odd last dim
        ((128, 96), "f32", "fp4", 128, False, None),
        ((3000,), "bf16", "nf4", 256, True, None),
        ((40, 77), "f16", "nf4", 512, True, None),           # odd last dim (torch dequant fallback)
        ((2, 2100), "f32", "fp4", 1024, True, None),
        ((5000,), "f32", "nf4", 4096, False, None),          # one full + one partial 4096 block
        ((70, 70), "bf16", "fp4", 2048, False, None),
        ((96, 128), "f16", "fp4", 64, True, None),
        ((7, 301), "f32", "nf4", 32, True, None),
        ((64, 65), "bf16", "nf4", 128, False, "zero_blocks"),
        ((50, 41), "f32", "fp4", 64, False, "zero_blocks"),
        ((16, 64), "f32", "nf4", 64, False, "ties"),
        ((16, 64), "f32", "fp4", 64, False, "ties"),
        ((300, 33), "bf16", "nf4", 64, True, None),          # 155 blocks -> nested 256-block partial
        ((1, 1), "f32", "nf4", 64, False, None),             # a single value
        ((257, 40), "f16", "nf4", 64, True, None),           # 161 blocks of absmax, double quant
        ((4500,), "bf16", "fp4", 4096, True, None),
        ((100, 100), "f32", "nf4", 256, False, None),
        ((48, 48), "f16", "nf4", 2048, True, None),
        ((9, 999), "bf16", "fp4", 512, False, None),
        ((33, 64), "f32", "fp4", 32, True, "zero_blocks"),
        ((64, 128), "bf16", "nf4", 64, True, None),
    ]
    for i, (shape, dt, qt, bs, dq, sp) in enumerate(q4):
        make_4bit(args.out, i, shape, dt, qt, bs, dq, 1000 + i, sp)

    q8 = [(3000, "f32", 256, True), (1000, "bf16", 64, True), (777, "f16", 128, True), (5000, "f32", 4096, True),
          (2048, "f32", 256, False), (513, "bf16", 2048, True), (300, "f32", 32, True)]
    for i, (n, dt, bs, sg) in enumerate(q8):
        make_8bit(args.out, i, n, dt, bs, sg, 2000 + i)

    int8 = [(16, 64, 48, "f16", 6.0), (1, 96, 32, "f32", 6.0), (24, 80, 40, "bf16", 0.0), (8, 64, 24, "f32", 6.0)]
    for i, (m, k, n, dt, th) in enumerate(int8):
        make_int8(args.out, i, m, k, n, dt, th, 3000 + i)

    fmt = [((64, 96), "bf16", "nf4", 64, True), ((32, 48), "f16", "fp4", 128, False),
           ((48, 64), "f32", "nf4", 64, False)]
    for i, (shape, dt, qt, bs, dq) in enumerate(fmt):
        make_format(args.out, i, shape, dt, qt, bs, dq, 4000 + i)

    # Code books, for the map constructors.
    save_file({"dynamic_signed": F.create_dynamic_map(signed=True),
               "dynamic_unsigned": F.create_dynamic_map(signed=False),
               "nf4": F.get_4bit_type("nf4", device="cpu"), "fp4": F.get_4bit_type("fp4", device="cpu")},
              os.path.join(args.out, "codebooks.safetensors"),
              metadata={"bitsandbytes": bnb.__version__, "torch": torch.__version__})
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"bitsandbytes {bnb.__version__}, torch {torch.__version__}: wrote {args.out} ({total} bytes)")


if __name__ == "__main__":
    main()
