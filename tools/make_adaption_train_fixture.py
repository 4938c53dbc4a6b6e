#!/usr/bin/env python3
"""LLaMA-Adapter training fixture for tests/train/adaption_train_test.cpp, made with the real peft +
transformers on the CPU (f32).

tests/fixtures/model/llama_bias (hidden 32, 2 layers, 4 q heads / 1 kv head of 8, biases on q/k/v/o: k_proj's
bias enters K = k_proj(prompt), and PEFT's adapter output goes through the whole o_proj, so o_proj's bias is
added twice) with AdaptionPromptConfig(adapter_len=3, adapter_layers=1): only the top layer is adapted, so
qtune's backward must stop above layer 0 yet reach the prompt. The gate is set non-zero (PEFT's zero init
would leave the prompt without a gradient) and the prompt random. Written to
tests/fixtures/peft/adaption_train/: PEFT's adapter folder (save_pretrained) and expected.safetensors:
  ids I32 [2, T], labels I32 [2, T]    HF's unshifted labels (some -100)
  loss F32 [1]                         PEFT's mean loss (training mode)
  grad.<param>, param.<param>          d(loss)/d(adaption_prompt, adaption_gate) and the values

(tests/fixtures/peft/adaption/ from tools/make_vtok_fixtures.py holds the same check on the GQA model
tests/fixtures/model/llama with both layers adapted.)

Run from the repository root:  python3 tools/make_adaption_train_fixture.py
"""
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from peft import AdaptionPromptConfig, get_peft_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = "tests/fixtures/model/llama_bias"
OUT = "tests/fixtures/peft/adaption_train"
IDS = torch.tensor([[1, 9, 77, 4, 120, 33, 250, 7, 61], [1, 200, 31, 8, 8, 150, 77, 2, 19]], dtype=torch.int32)


def main():
    os.chdir(ROOT)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, device_map="cpu")
    pm = get_peft_model(model, AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=3, adapter_layers=1))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.copy_(torch.tensor([0.8]) if "adaption_gate" in n else torch.randn(p.shape, generator=g))
    labels = IDS.long().clone()
    labels[0, 2:4] = -100
    labels[1, 7] = -100
    pm.train()
    out = pm(input_ids=IDS.long(), labels=labels)
    out.loss.backward()
    t = {"ids": IDS, "labels": labels.to(torch.int32), "loss": out.loss.detach().reshape(1).float()}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            t["grad." + n] = p.grad.detach().float().contiguous()
            t["param." + n] = p.detach().float().contiguous()
    pm.zero_grad()
    pm.save_pretrained(OUT)
    readme = os.path.join(OUT, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    save_file(t, os.path.join(OUT, "expected.safetensors"))
    grads = {k: v.norm().item() for k, v in t.items() if k.startswith("grad.")}
    print(f"loss {out.loss.item():.6f}; gradient norms {grads}")


if __name__ == "__main__":
    main()
