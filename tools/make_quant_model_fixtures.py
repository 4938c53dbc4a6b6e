#!/usr/bin/env python3
"""Regenerates tests/fixtures/quant_model/: tiny Llama / Qwen2 fixture models (tests/fixtures/model/)
quantized by transformers + bitsandbytes on the CPU and saved with save_pretrained, plus the logits that
transformers computes with the quantized model for fixed ids. qtune's tests load these folders (no flags)
and compare logits, and compare their own quantization of the same source weights byte for byte.

How (bitsandbytes 0.50.2, transformers 5.23, torch 2.15 CPU): AutoModelForCausalLM.from_pretrained(src, quantization_config=BitsAndBytesConfig(...),
device_map="cpu") (bitsandbytes >= 0.45 quantizes on the CPU; transformers accepts device_map="cpu"), then
save_pretrained (safe serialization). The forward uses bitsandbytes' portable CPU path (see load()). Folders (each also holds logits.safetensors: ids I32 [1, T], logits
F32 [1, T, V]):
  mistral_nf4_dq    mistral, NF4 + double quant, compute dtype float32
  mistral_fp4_bf16  mistral, FP4, compute dtype bfloat16
  llama_int8        llama, LLM.int8, threshold 6.0
  qwen2_int8        qwen2 (q/k/v biases, tied embeddings), LLM.int8, threshold 1.5 (low, so outlier columns
                    occur in these small models)
  mistral_nf4_bf16_storage_skip
                    mistral, NF4 + double quant, compute float32, bnb_4bit_quant_storage bfloat16 (the packed
                    bytes saved as BF16 [n / 4, 1], as FSDP-QLoRA recipes do) and llm_int8_skip_modules
                    ["lm_head", "model.layers.1.self_attn", "down_proj"] (a prefix and a suffix key); no
                    `qtune quantize` check (qtune writes uint8 storage)
  mistral_fp4_dq_lm_head
                    mistral, FP4 + double quant, compute float32, llm_int8_skip_modules ["o_proj"]: a list
                    given replaces transformers' default (lm_head), so lm_head is quantized and only the
                    o_proj modules stay dense; config.json keeps the list
The 4-bit cases use the mistral fixture because every Linear there has in_features a multiple of 64:
bitsandbytes 0.50.2's native CPU dequantize kernel (libbitsandbytes_cpu, taken when the last dim is even)
dequantizes wrongly when in_features is not a multiple of the block size (llama's down_proj [64, 160]: 25%
error vs the source instead of 9%); its generic torch path (_dequantize_4bit_compute) agrees with qtune
exactly on such shapes, and the stored bytes are right either way.

It also writes skip_modules.json: for a list of llm_int8_skip_modules keys and module names, whether
transformers' should_convert_module keeps the module dense (qtune's skip_quantization must agree).

With --qtune PATH/TO/qtune the script also checks the other direction: it runs `qtune quantize` on the same
sources into a temporary folder, loads that in transformers (from_pretrained, no options), and requires its
logits to equal the bitsandbytes-quantized model's exactly and its tensors to equal bitsandbytes' bytes.

Usage: python3 tools/make_quant_model_fixtures.py [--out DIR] [--qtune BUILD/qtune] [--check-only]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "tests", "fixtures", "model")
IDS = [139, 206, 180, 45, 269, 267, 378, 5, 77, 301, 12, 250, 99, 3, 360, 41]

CASES = {
    "mistral_nf4_dq": ("mistral", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=torch.float32),
                       ["--4bit", "nf4", "--double-quant", "--compute-dtype", "float32"]),
    "mistral_fp4_bf16": ("mistral", dict(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                                         bnb_4bit_compute_dtype=torch.bfloat16),
                         ["--4bit", "fp4", "--compute-dtype", "bfloat16"]),
    "llama_int8": ("llama", dict(load_in_8bit=True), ["--8bit"]),
    "qwen2_int8": ("qwen2", dict(load_in_8bit=True, llm_int8_threshold=1.5), ["--8bit", "--threshold", "1.5"]),
    "mistral_nf4_bf16_storage_skip": (
        "mistral", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                        bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.bfloat16,
                        llm_int8_skip_modules=["lm_head", "model.layers.1.self_attn", "down_proj"]),
        None),
    "mistral_fp4_dq_lm_head": (
        "mistral", dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True,
                        bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["o_proj"]),
        ["--4bit", "fp4", "--double-quant", "--compute-dtype", "float32", "--skip-modules", "o_proj"]),
}


SKIP_KEYS = ["lm_head", "layers.1", "model.layers.1", "model.layers.1.self_attn", "model.layers.*.mlp", "mlp.gate",
             "proj", "down_proj", "mlp", "self_attn", "q_proj|k_proj", r"model\.layers\.1[0-9]", "fc1", "", "head"]
SKIP_NAMES = ["lm_head", "model.lm_head", "model.layers.1.self_attn.q_proj", "model.layers.11.self_attn.k_proj",
              "model.layers.1.mlp.gate_proj", "model.layers.0.mlp.down_proj", "model.layers.12.mlp.up_proj",
              "model.layers.0.self_attn.o_proj", "model.decoder.layers.23.fc1", "model.decoder.layers.2.fc11",
              "score"]


def write_skip_modules(path):
    from transformers.quantizers.quantizers_utils import should_convert_module
    cases = [{"keys": [k], "name": n, "skip": not should_convert_module(n, [k])} for k in SKIP_KEYS for n in SKIP_NAMES]
    cases += [{"keys": ["lm_head", "down_proj"], "name": n, "skip": not should_convert_module(n, ["lm_head", "down_proj"])}
              for n in SKIP_NAMES]
    with open(path, "w") as f:  # one case per line
        f.write("[\n" + ",\n".join(json.dumps(c) for c in cases) + "\n]\n")
    print(f"skip_modules.json: {len(cases)} cases, {sum(c['skip'] for c in cases)} skipped")


def ids_for(model):
    return [i % model.config.vocab_size for i in IDS]


def logits_of(model):
    with torch.no_grad():
        return model(torch.tensor([ids_for(model)])).logits.float()


def load(path, **kw):
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32, **kw)
    # On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights at the first forward for a fused CPU
    # kernel; that repacking fails when in_features is not a multiple of the block size (160 here) and
    # computes differently from every other device. Use the portable path (dequantize, then torch matmul).
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    return model


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "quant_model"))
    ap.add_argument("--qtune", help="qtune binary: also check qtune-quantized folders in transformers")
    ap.add_argument("--check-only", action="store_true", help="do not rewrite the fixtures")
    a = ap.parse_args()
    torch.manual_seed(0)
    failures = 0
    if not a.check_only:
        write_skip_modules(os.path.join(a.out, "skip_modules.json"))
    for name, (src_name, qkw, qtune_args) in CASES.items():
        src = os.path.join(SRC, src_name)
        out = os.path.join(a.out, name)
        model = load(src, quantization_config=BitsAndBytesConfig(**qkw))
        logits = logits_of(model)
        if not a.check_only:
            shutil.rmtree(out, ignore_errors=True)
            model.save_pretrained(out)
            save_file({"ids": torch.tensor([ids_for(model)], dtype=torch.int32), "logits": logits.contiguous()},
                      os.path.join(out, "logits.safetensors"))
            # The saved folder must reload to the same logits.
            again = logits_of(load(out))
            assert torch.equal(again, logits), f"{name}: reloaded folder gives other logits ({rel(again, logits)})"
        dense = logits_of(load(src))
        print(f"{name}: saved; quantized vs dense logits rel err {rel(logits, dense):.4f}")

        if a.qtune and qtune_args is not None:
            with tempfile.TemporaryDirectory() as tmp:
                qdir = os.path.join(tmp, name)
                subprocess.run([a.qtune, "quantize", "--model", src, "--out", qdir] + qtune_args, check=True)
                ours = load_file(os.path.join(qdir, "model.safetensors"))
                theirs = load_file(os.path.join(out, "model.safetensors"))
                same_keys = sorted(ours) == sorted(theirs)
                diff = [k for k in theirs if k in ours and not (ours[k].dtype == theirs[k].dtype and
                        ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k]))]
                qcfg = json.load(open(os.path.join(qdir, "config.json")))["quantization_config"]
                tcfg = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
                ql = logits_of(load(qdir))
                ok = same_keys and not diff and qcfg == tcfg and torch.equal(ql, logits)
                failures += not ok
                print(f"  qtune quantize -> transformers: same tensor names {same_keys}, differing tensors {diff}, "
                      f"same quantization_config {qcfg == tcfg}, logits rel err vs bnb {rel(ql, logits):.3g}: "
                      f"{'OK' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
