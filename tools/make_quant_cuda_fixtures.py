#!/usr/bin/env python3
"""Regenerates tests/fixtures/quant/cuda_q4_*.safetensors and cuda_q8_*.safetensors: what bitsandbytes'
CUDA kernels write for 4-bit (NF4 / FP4, plain and double-quant absmax) and 8-bit dynamic blockwise
quantization. They differ from its CPU path in places (quant/bnb_cuda_rules.h), so transformers on a GPU
writes other bytes than on the CPU; qtune's BnbBackend::Cuda must reproduce these files bit for bit.

Also cuda_dequantized.safetensors (its CUDA dequantize of the smaller q4 / q8 files, key q4_NN / q8_NN, in the
input's dtype), cuda_int8_*.safetensors (int8_vectorwise_quant on CUDA: weights without a threshold, activations with
one) and torch_cuda_mean.json (torch.mean of f32 values on CUDA, the double-quant offset, for sizes that take
each of torch's reduction layouts; the values come from a hash of the index that the C++ test recomputes).

Needs a CUDA GPU and bitsandbytes with its CUDA library (0.50.2 and torch 2.11 made the committed files):
  python3 tools/make_quant_cuda_fixtures.py --out tests/fixtures/quant
(quantize_blockwise: the signed dynamic map, its default code; block sizes from 64, as its CUDA path takes.)
Inputs hold the cases where the backends part: tiny values of both signs and zeros (FP4's sign of zero),
an all-zero block, a partial last block and an odd count, and values on the CPU path's code midpoints.
"""
import argparse
import os

import json

import numpy as np
import torch
from safetensors.torch import save_file

import bitsandbytes.functional as F

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def make_input(n, bs, dtype, seed, qt, subnormal=False, tiny=False):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, generator=g)
    scale = float(torch.empty(1).uniform_(0.02, 3.0, generator=g))
    # tiny: absmax near 5e-38, so code · absmax is subnormal for the small codes (CUDA's dequantize flushes it)
    x = r * (2e-38 if tiny else scale)
    nb = (n + bs - 1) // bs
    if subnormal and nb > 8:  # where flush-to-zero shows: subnormal inputs, and subnormal x / absmax
        x[5 * bs:6 * bs] = torch.randn(bs, generator=g) * 1e-39                        # all subnormal
        x[6 * bs:6 * bs + 8] = torch.tensor([1e-39, -1e-39, 3e-40, -3e-40, 1e-38, -1e-38, 2e-38, -2e-38])
        x[7 * bs:8 * bs] = torch.randn(bs, generator=g) * 1e-10
        x[7 * bs] = 1e30                                                               # x / absmax < 2^-126
        x[8 * bs:8 * bs + 4] = torch.tensor([1e-39, -1e-39, 5e-39, -5e-39])  # beside normal values
    if nb > 3:
        x[bs:2 * bs] = 0.0                                        # an all-zero block
        small = torch.tensor([1e-30, -1e-30, 0.0, -0.0, 1e-4, -1e-4])
        x[2 * bs:2 * bs + 6] = small * x[2 * bs:3 * bs].abs().max()  # near zero, both signs
    if nb > 4 and qt is not None:  # the CPU path's midpoints of a block whose absmax is 1
        code = F.get_4bit_type(qt, device="cpu").float().sort().values
        mids = (code[1:] + code[:-1]) / 2
        blk = x[3 * bs:4 * bs]
        blk[0] = 1.0
        blk[1:] = mids.repeat(bs // 15 + 1)[:bs - 1]
    return x.to(DTYPES[dtype])


def hashed_values(n, seed):
    """n f32 values in [1/8, 32) from splitmix64(i + seed * 2^32): 23 mantissa bits and an exponent of -3..4."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(seed << 32) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    e = (z & np.uint64(7)).astype(np.uint32) + np.uint32(124)
    bits = (e << np.uint32(23)) | (z >> np.uint64(41)).astype(np.uint32)
    return bits.view(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "quant"))
    a = ap.parse_args()
    cases4 = [  # numel, blocksize, dtype, quant type, double quant
        (4096, 64, "f32", "nf4", False), (4096, 64, "bf16", "fp4", False), (25641, 64, "f16", "nf4", True),
        (25641, 64, "bf16", "fp4", True), (3333, 32, "f32", "fp4", False), (3333, 32, "bf16", "nf4", True),
        (70001, 128, "f16", "fp4", True), (70001, 256, "f32", "nf4", False), (12345, 512, "bf16", "fp4", False),
        (65536, 1024, "f16", "nf4", True), (40000, 2048, "f32", "fp4", True), (50001, 4096, "bf16", "nf4", False),
        (40000, 64, "bf16", "nf4", True), (40000, 64, "f32", "fp4", True), (7, 64, "f16", "fp4", False),
        (999, 64, "f32", "nf4", True), (66000, 64, "bf16", "fp4", True), (33, 32, "bf16", "nf4", False),
        (30000, 64, "f16", "fp4", False), (50000, 64, "f32", "nf4", True),
        (20000, 64, "f32", "fp4", True), (20000, 64, "bf16", "fp4", False), (9000, 128, "f32", "nf4", True),
        (9000, 64, "bf16", "nf4", False), (4096, 64, "f32", "nf4", False), (4096, 64, "f32", "fp4", True)]
    dequantized = {}  # bitsandbytes' CUDA dequantize of the smaller files, into the input's dtype
    for i, (n, bs, dt, qt, dq) in enumerate(cases4):
        x = make_input(n, bs, dt, 100 + i, qt, subnormal=20 <= i < 24, tiny=i >= 24)
        packed, st = F.quantize_4bit(x.cuda(), blocksize=bs, quant_type=qt, compress_statistics=dq)
        if n <= 30000:
            dequantized[f"q4_{i:02d}"] = F.dequantize_4bit(packed, st).cpu()
        t = {"input": x, "packed": packed.cpu()}
        if dq:
            t.update(absmax_u8=st.absmax.cpu(), nested_absmax=st.state2.absmax.cpu(),
                     nested_code=st.state2.code.cpu(), offset=st.offset.reshape(1).float().cpu())
        else:
            t["absmax"] = st.absmax.cpu()
        meta = {"kind": "q4", "backend": "cuda", "quant_type": qt, "blocksize": str(bs), "double_quant": str(int(dq)),
                "dtype": dt, "shape": f"[{n}]"}
        save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(a.out, f"cuda_q4_{i:02d}.safetensors"),
                  metadata=meta)
    cases8 = [(5000, 256, "f32"), (5000, 64, "bf16"), (70001, 4096, "f16"), (300, 64, "f32"), (65536, 256, "bf16"),
              (12345, 2048, "f32"), (9000, 64, "f32"), (9000, 256, "bf16")]
    for i, (n, bs, dt) in enumerate(cases8):
        x = make_input(n, bs, dt, 500 + i, None, subnormal=i >= 6)
        q, st = F.quantize_blockwise(x.cuda(), blocksize=bs)
        if n <= 30000:
            dequantized[f"q8_{i:02d}"] = F.dequantize_blockwise(q, st).cpu()
        save_file({"input": x.contiguous(), "q": q.cpu().contiguous(), "absmax": st.absmax.cpu().contiguous(),
                   "code": st.code.cpu().contiguous()},
                  os.path.join(a.out, f"cuda_q8_{i:02d}.safetensors"),
                  metadata={"kind": "q8", "backend": "cuda", "blocksize": str(bs), "dtype": dt})
    save_file({k: v.contiguous() for k, v in dequantized.items()}, os.path.join(a.out, "cuda_dequantized.safetensors"),
              metadata={"kind": "dequantize", "backend": "cuda"})
    cases_int8 = [(64, 4096, 0.0), (33, 1000, 0.0), (5, 12288, 0.0), (48, 2048, 6.0), (9, 4104, 6.0)]
    for i, (rows, cols, thr) in enumerate(cases_int8):
        g = torch.Generator().manual_seed(700 + i)
        x = torch.randn(rows, cols, generator=g) * float(torch.empty(1).uniform_(0.01, 2.0, generator=g))
        x[1] = 0.0                                                      # a zero row
        x[2, :7] = torch.tensor([1e-4, -65504.0, 3.0, 0.5, -0.25, 7.5, -6.0])
        if thr > 0:
            x[:, torch.randint(0, cols, (cols // 64,), generator=g)] *= 8.0  # outlier columns
        x = x.half()
        q, scale, cols_out = F.int8_vectorwise_quant(x.cuda(), threshold=thr)
        t = {"input": x, "q": q.cpu(), "scale": scale.cpu(),
             "outlier_cols": (cols_out.cpu() if cols_out is not None else torch.empty(0, dtype=torch.int64)).long()}
        save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(a.out, f"cuda_int8_{i:02d}.safetensors"),
                  metadata={"kind": "int8", "backend": "cuda", "threshold": repr(thr)})
    means = []
    sizes = [1, 2, 3, 5, 16, 20, 31, 32, 33, 64, 100, 127, 128, 129, 255, 256, 400, 511, 512, 513, 1000, 1024,
             2047, 2048, 2049, 4095, 4096, 5000, 8191, 8192, 8193, 10000, 16383, 16384, 20000, 32768, 65535,
             65536, 100000, 131071, 131072, 131073, 200000, 262144, 300001, 458752, 524288, 917504, 1000000,
             1048576, 1835008, 2097152, 3670016, 4194304, 7340032]
    for seed in range(3):
        for n in sizes:
            x = torch.from_numpy(hashed_values(n, seed)).cuda()
            m = x.mean()
            means.append([n, seed, int(m.cpu().view(torch.int32).item()) & 0xFFFFFFFF])
    with open(os.path.join(a.out, "torch_cuda_mean.json"), "w") as f:
        json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(),
                   "values": "hashed_values(n, seed) in tools/make_quant_cuda_fixtures.py", "means": means}, f)
        f.write("\n")
    print(f"wrote {len(cases4)} cuda_q4, {len(cases8)} cuda_q8, {len(cases_int8)} cuda_int8 files and "
          f"{len(means)} means to {a.out}")


if __name__ == "__main__":
    main()
