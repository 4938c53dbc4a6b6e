#!/usr/bin/env python3
"""PEFT interop fixtures for src/peft (tests/peft), made with the real peft + transformers on the CPU.

1. PEFT → qtune: LoRA adapters on the tiny fixture models of tests/fixtures/model/, with random non-trivial
   A and B (B is zero at init, which would hide every bug), saved by PeftModel.save_pretrained, plus the
   logits PEFT computes with them (expected.safetensors: ids I32 [2, T], logits F32 [2, T, V], base_logits,
   logits_bf16 = PEFT's logits with the base model in bf16, the adapter in f32).
     lora_qv/     llama,      target_modules [q_proj, v_proj], r 4, alpha 8
     rslora_all/  llama,      "all-linear", r 8, alpha 16, use_rslora
     bias_mts/    llama_bias, [q_proj, k_proj, down_proj], r 2, alpha 4, bias "all", modules_to_save [lm_head]
     dora_qv/     llama,      [q_proj, v_proj, o_proj], r 4, alpha 8, use_dora (magnitude vector)
     qlora_nf4/   quant_model/mistral_nf4_dq (bitsandbytes NF4 + double quant), "all-linear", r 4, alpha 8
2. qtune → PEFT (`--check-qtune`): loads tests/fixtures/peft/qtune_written/ (LoRA, all-linear, rsLoRA) and
   qtune_written_dora/ (DoRA), qtune_written_bias/ (llama_bias, bias "all", modules_to_save lm_head) — adapter folders that tests/peft's LoraModel.QtuneWrittenFixtures test writes
   (QTUNE_REGEN_PEFT=1 build-*/test_peft --gtest_filter='*QtuneWritten*'), with qtune's logits in
   qtune_logits.safetensors — with PeftModel.from_pretrained and compares the logits (prints the relative
   error; exits 1 above 1e-4).

Run from the repository root:  python3 tools/make_peft_fixtures.py [--check-qtune]
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from peft import LoraConfig, PeftModel, get_peft_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = "tests/fixtures/peft"
IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 250, 7, 64, 12], [1, 200, 31, 8, 8, 150, 77, 2, 19, 5]], dtype=torch.int32)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def load_base(base, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, device_map="cpu")
    # bitsandbytes 4-bit on CPUs with AVX512-BF16 repacks weights for a fused kernel that computes
    # differently from every other device; use the portable path (as tools/make_quant_model_fixtures.py).
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    return model


def make(name, base, **cfg):
    torch.manual_seed(sum(map(ord, name)))
    model = load_base(base)
    model.eval()
    with torch.no_grad():
        base_logits = model(IDS.long()).logits.float()
    pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **cfg))
    g = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # trained biases, modules_to_save copies
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    pm.eval()
    with torch.no_grad():
        logits = pm(IDS.long()).logits.float()
    out = os.path.join(OUT, name)
    pm.save_pretrained(out)
    os.remove(os.path.join(out, "README.md"))  # PEFT's model-card template
    # The same adapter over the base model in bf16 (PEFT keeps the adapter in f32): the error a bf16
    # engine is expected to have, for the CUDA test's bound.
    bf = PeftModel.from_pretrained(load_base(base, torch.bfloat16), out)
    bf.eval()
    with torch.no_grad():
        logits_bf16 = bf(IDS.long()).logits.float()
    print(f"{name}: PEFT bf16 base vs f32 relative error {rel(logits_bf16, logits):.2e}")
    save_file({"ids": IDS, "logits": logits.contiguous(), "base_logits": base_logits.contiguous(),
               "logits_bf16": logits_bf16.contiguous()}, os.path.join(out, "expected.safetensors"))
    # Reload through PEFT's own reader as a sanity check of the folder.
    again = PeftModel.from_pretrained(load_base(base), out)
    again.eval()
    with torch.no_grad():
        l2 = again(IDS.long()).logits.float()
    print(f"{name}: adapter changes logits by {rel(logits, base_logits):.3f} (relative); reload err {rel(l2, logits):.1e}")


def check_qtune(name):
    folder = os.path.join(OUT, name)
    exp = load_file(os.path.join(folder, "qtune_logits.safetensors"))
    import json
    base = json.load(open(os.path.join(folder, "adapter_config.json")))["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = PeftModel.from_pretrained(model, folder)
    pm.eval()
    with torch.no_grad():
        logits = pm(exp["ids"].long()).logits.float()
        with pm.disable_adapter():
            base_logits = pm(exp["ids"].long()).logits.float()
    e = rel(logits, exp["logits"])
    print(f"{name}: PEFT logits vs qtune logits relative error {e:.2e} "
          f"(adapter moves logits by {rel(base_logits, exp['logits']):.3f})")
    return e


def main():
    os.chdir(ROOT)
    if "--check-qtune" in sys.argv:
        errs = [check_qtune(n) for n in ("qtune_written", "qtune_written_dora", "qtune_written_bias")]
        sys.exit(0 if max(errs) <= 1e-4 else 1)
    make("lora_qv", "tests/fixtures/model/llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    make("rslora_all", "tests/fixtures/model/llama", r=8, lora_alpha=16, target_modules="all-linear",
         use_rslora=True)
    make("bias_mts", "tests/fixtures/model/llama_bias", r=2, lora_alpha=4,
         target_modules=["q_proj", "k_proj", "down_proj"], bias="all", modules_to_save=["lm_head"])
    make("dora_qv", "tests/fixtures/model/llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
         use_dora=True)
    # QLoRA: LoRA over the NF4 + double-quant model that transformers + bitsandbytes saved
    # (tests/fixtures/quant_model/mistral_nf4_dq, compute dtype f32).
    make("qlora_nf4", "tests/fixtures/quant_model/mistral_nf4_dq", r=4, lora_alpha=8, target_modules="all-linear")


if __name__ == "__main__":
    main()
