#!/usr/bin/env python3
"""Golden merged weights for `qtune merge` (tests/peft/merge_test.cpp), made with the real peft + transformers.

For each PEFT-made adapter of tests/fixtures/peft/ (tools/make_peft_fixtures.py) this loads the adapter's base
model in f32, attaches the adapter with PeftModel.from_pretrained and calls merge_and_unload(); the merged
tensors of layer 0 that the merge changed (LoRA / DoRA weights, trained biases) go to
tests/fixtures/peft/<name>/merged_layer0.safetensors (F32). Later layers and lm_head (modules_to_save) take the
same code path in qtune; the test checks them through the merged model's logits.

The 4-bit base (qlora_nf4, bitsandbytes NF4 + double quant) is first dequantized with transformers'
model.dequantize(): the golden is dequant(W4) + scale·B·A, the value PEFT's Linear4bit.merge computes before it
re-quantizes to 4 bits. qtune writes that dense value (its output is a 16-bit model); the script prints how
far PEFT's re-quantized 4-bit merge is from it.

`--check-qtune QTUNE`: runs `QTUNE merge --dtype f32` on every fixture adapter, loads each merged folder with
AutoModelForCausalLM and compares its logits with PEFT's base + adapter logits (expected.safetensors); prints the
relative errors and exits 1 above 1e-5.

Run from the repository root:  python3 tools/make_merge_fixtures.py [--check-qtune build/qtune]
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from peft import PeftModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = "tests/fixtures/peft"


def load_base(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu")
    for m in model.modules():  # bitsandbytes' AVX512-BF16 CPU repacking (see make_peft_fixtures.py)
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    return model


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def make(name):
    folder = os.path.join(OUT, name)
    base_path = json.load(open(os.path.join(folder, "adapter_config.json")))["base_model_name_or_path"]
    base = load_base(base_path)
    quantized = getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
    if quantized:
        base = base.dequantize()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, folder).merge_and_unload()
    after = merged.state_dict()
    golden = {}
    for k, v in after.items():
        if k.startswith("model.layers.0.") and k in before and not torch.equal(before[k], v):
            golden[k] = v.float().contiguous()
    save_file(golden, os.path.join(folder, "merged_layer0.safetensors"))
    print(f"{name}: {len(golden)} merged layer-0 tensors: {', '.join(sorted(golden))}")
    if quantized:
        # PEFT on the 4-bit model itself: merge, re-quantize; compare the dequantized result.
        q = PeftModel.from_pretrained(load_base(base_path), folder).merge_and_unload().dequantize()
        sd = q.state_dict()
        errs = [rel(sd[k].float(), v) for k, v in golden.items()]
        print(f"{name}: PEFT's re-quantized 4-bit merge vs the dense merge, rel err {min(errs):.2e}..{max(errs):.2e}")


def check_qtune(qtune, name, tmp):
    folder = os.path.join(OUT, name)
    base_path = json.load(open(os.path.join(folder, "adapter_config.json")))["base_model_name_or_path"]
    out = os.path.join(tmp, name)
    subprocess.run([qtune, "merge", "--model", base_path, "--adapter", folder, "--out", out, "--dtype", "f32"],
                   check=True)
    exp = load_file(os.path.join(folder, "expected.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        logits = model(exp["ids"].long()).logits.float()
    e = rel(logits, exp["logits"])
    print(f"{name}: transformers on the qtune-merged folder vs PEFT base + adapter, logits rel err {e:.2e}")
    return e


def main():
    os.chdir(ROOT)
    if "--check-qtune" in sys.argv:
        qtune = os.path.abspath(sys.argv[sys.argv.index("--check-qtune") + 1])
        with tempfile.TemporaryDirectory() as tmp:
            errs = [check_qtune(qtune, n, tmp) for n in ("lora_qv", "rslora_all", "bias_mts", "dora_qv", "qlora_nf4")]
        sys.exit(0 if max(errs) <= 1e-5 else 1)
    for name in ("lora_qv", "dora_qv", "bias_mts", "qlora_nf4"):
        make(name)


if __name__ == "__main__":
    main()
