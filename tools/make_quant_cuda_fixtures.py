#!/usr/bin/env python3
"""Regenerates tests/fixtures/quant/cuda_q4_*.safetensors and cuda_q8_*.safetensors: what bitsandbytes'
CUDA kernels write for 4-bit (NF4 / FP4, plain and double-quant absmax) and 8-bit dynamic blockwise
quantization. They differ from its CPU path in places (quant/bnb_cuda_rules.h), so transformers on a GPU
writes other bytes than on the CPU; qtune's BnbBackend::Cuda must reproduce these files bit for bit.

Needs a CUDA GPU and bitsandbytes with its CUDA library (0.50.2 made the committed files):
  python3 tools/make_quant_cuda_fixtures.py --out tests/fixtures/quant
(quantize_blockwise: the signed dynamic map, its default code; block sizes from 64, as its CUDA path takes.)
Inputs hold the cases where the backends part: tiny values of both signs and zeros (FP4's sign of zero),
an all-zero block, a partial last block and an odd count, and values on the CPU path's code midpoints.
"""
import argparse
import os

import torch
from safetensors.torch import save_file

import bitsandbytes.functional as F

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def make_input(n, bs, dtype, seed, qt):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * float(torch.empty(1).uniform_(0.02, 3.0, generator=g))
    nb = (n + bs - 1) // bs
    if nb > 3:
        x[bs:2 * bs] = 0.0                                        # an all-zero block
        tiny = torch.tensor([1e-30, -1e-30, 0.0, -0.0, 1e-4, -1e-4])
        x[2 * bs:2 * bs + 6] = tiny * x[2 * bs:3 * bs].abs().max()  # near zero, both signs
    if nb > 4 and qt is not None:  # the CPU path's midpoints of a block whose absmax is 1
        code = F.get_4bit_type(qt, device="cpu").float().sort().values
        mids = (code[1:] + code[:-1]) / 2
        blk = x[3 * bs:4 * bs]
        blk[0] = 1.0
        blk[1:] = mids.repeat(bs // 15 + 1)[:bs - 1]
    return x.to(DTYPES[dtype])


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
        (30000, 64, "f16", "fp4", False), (50000, 64, "f32", "nf4", True)]
    for i, (n, bs, dt, qt, dq) in enumerate(cases4):
        x = make_input(n, bs, dt, 100 + i, qt)
        packed, st = F.quantize_4bit(x.cuda(), blocksize=bs, quant_type=qt, compress_statistics=dq)
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
              (12345, 2048, "f32")]
    for i, (n, bs, dt) in enumerate(cases8):
        x = make_input(n, bs, dt, 500 + i, None)
        q, st = F.quantize_blockwise(x.cuda(), blocksize=bs)
        save_file({"input": x.contiguous(), "q": q.cpu().contiguous(), "absmax": st.absmax.cpu().contiguous(),
                   "code": st.code.cpu().contiguous()},
                  os.path.join(a.out, f"cuda_q8_{i:02d}.safetensors"),
                  metadata={"kind": "q8", "backend": "cuda", "blocksize": str(bs), "dtype": dt})
    print(f"wrote {len(cases4)} cuda_q4 and {len(cases8)} cuda_q8 files to {a.out}")


if __name__ == "__main__":
    main()
