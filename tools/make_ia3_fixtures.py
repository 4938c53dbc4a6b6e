#!/usr/bin/env python3
"""IA3 and multi-adapter fixtures for src/peft (tests/peft/ia3_test.cpp, multi_adapter_test.cpp), made with
the real peft + transformers on the CPU in float32.

1. PEFT → qtune: IA3 adapters with random non-trivial vectors (PEFT initialises them to ones, which would
   hide every bug), saved by PeftModel.save_pretrained, with PEFT's logits (expected.safetensors: ids I32
   [B, T], logits F32 [B, T, V], base_logits, logits_bf16 = PEFT's logits over the bf16 base with the
   adapter in f32, and greedy I32 [G] = PEFT's greedy continuation of ids[0], adapter on).
     ia3_default/  tests/fixtures/model/llama, PEFT's llama defaults (k_proj, v_proj, down_proj; down_proj
                   feed-forward: its INPUT is scaled)
     ia3_bias/     tests/fixtures/model/llama_bias (biases: the output scaling scales them too),
                   [q_proj, o_proj, up_proj, down_proj], feed-forward [up_proj, down_proj]
     ia3_bundled/  models/qtune-tiny-8m, PEFT's defaults
2. Several LoRA adapters on one base: PeftModel.add_weighted_adapter with combination_type "linear" and
   "cat" (weighted/expected.safetensors: the logits of each combined adapter, and its A/B of one module).
     weighted/a    llama, r 4, alpha 8, [q_proj, v_proj]
     weighted/b    llama, r 4, alpha 16, [q_proj, o_proj], rsLoRA off
     weighted/c    llama, r 2, alpha 2, [v_proj, down_proj] (for "cat": ranks may differ)
3. qtune → PEFT (`--check-qtune`): loads tests/fixtures/peft/qtune_written_ia3/ (written by tests/peft's
   Ia3.QtuneWrittenFixture: QTUNE_REGEN_PEFT=1 build-*/test_peft --gtest_filter='Ia3.QtuneWritten*'), whose
   qtune_logits.safetensors holds qtune's logits, with PeftModel.from_pretrained; prints the relative error,
   writes PEFT's logits to peft_logits.safetensors (the C++ test compares against them), exits 1 above 1e-5.

Run from the repository root:  python3 tools/make_ia3_fixtures.py [--check-qtune]
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from peft import IA3Config, LoraConfig, PeftModel, get_peft_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = "tests/fixtures/peft"
IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 250, 7, 64, 12], [1, 200, 31, 8, 8, 150, 77, 2, 19, 5]], dtype=torch.int32)
IDS_BUNDLED = torch.tensor([[0, 412, 77, 1290, 8, 301, 2047, 19]], dtype=torch.int32)
GREEDY_NEW = 8


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def load_base(base, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, device_map="cpu")
    model.eval()
    return model


def greedy(model, ids):
    with torch.no_grad():
        out = model.generate(input_ids=ids[:1].long(), attention_mask=torch.ones_like(ids[:1]).long(),
                             max_new_tokens=GREEDY_NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].to(torch.int32)


def make_ia3(name, base, ids, **cfg):
    torch.manual_seed(sum(map(ord, name)))
    model = load_base(base)
    with torch.no_grad():
        base_logits = model(ids.long()).logits.float()
    pm = get_peft_model(model, IA3Config(task_type="CAUSAL_LM", **cfg))
    g = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "ia3_l" in n:
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
    pm.eval()
    with torch.no_grad():
        logits = pm(ids.long()).logits.float()
    tokens = greedy(pm, ids)
    out = os.path.join(OUT, name)
    pm.save_pretrained(out)
    os.remove(os.path.join(out, "README.md"))  # PEFT's model-card template
    bf = PeftModel.from_pretrained(load_base(base, torch.bfloat16), out)
    bf.eval()
    with torch.no_grad():
        logits_bf16 = bf(ids.long()).logits.float()
    save_file({"ids": ids, "logits": logits.contiguous(), "base_logits": base_logits.contiguous(),
               "logits_bf16": logits_bf16.contiguous(), "greedy": tokens.contiguous()},
              os.path.join(out, "expected.safetensors"))
    again = PeftModel.from_pretrained(load_base(base), out)
    again.eval()
    with torch.no_grad():
        l2 = again(ids.long()).logits.float()
    print(f"{name}: adapter moves logits by {rel(logits, base_logits):.3f}; bf16 base err "
          f"{rel(logits_bf16, logits):.2e}; reload err {rel(l2, logits):.1e}; greedy {tokens.tolist()}")


def make_weighted():
    base = "tests/fixtures/model/llama"
    out = os.path.join(OUT, "weighted")
    specs = {
        "a": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        "b": dict(r=4, lora_alpha=16, target_modules=["q_proj", "o_proj"]),
        "c": dict(r=2, lora_alpha=2, target_modules=["v_proj", "down_proj"]),
    }
    for k, spec in specs.items():  # each adapter alone, with random A and B, in its own folder
        model = load_base(base)
        pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **spec))
        g = torch.Generator().manual_seed(100 + ord(k))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        pm.save_pretrained(os.path.join(out, k))
        os.remove(os.path.join(out, k, "README.md"))
    pm = PeftModel.from_pretrained(load_base(base), os.path.join(out, "a"), adapter_name="a")
    pm.load_adapter(os.path.join(out, "b"), adapter_name="b")
    pm.load_adapter(os.path.join(out, "c"), adapter_name="c")
    pm.eval()
    res = {"ids": IDS}
    with torch.no_grad():
        for k in "abc":
            pm.set_adapter(k)
            res["logits_" + k] = pm(IDS.long()).logits.float().contiguous()
        with pm.disable_adapter():
            res["base_logits"] = pm(IDS.long()).logits.float().contiguous()
    combos = {"lin": (["a", "b"], [0.7, -0.4], "linear"), "cat": (["a", "b", "c"], [0.5, 1.3, -0.8], "cat")}
    module = "base_model.model.model.layers.1.self_attn.q_proj"
    for name, (ads, w, kind) in combos.items():
        pm.add_weighted_adapter(ads, w, name, combination_type=kind)
        pm.set_adapter(name)
        with torch.no_grad():
            res["logits_" + name] = pm(IDS.long()).logits.float().contiguous()
        q = pm.get_submodule(module)
        res[name + ".q1.lora_A"] = q.lora_A[name].weight.detach().float().contiguous()
        res[name + ".q1.lora_B"] = q.lora_B[name].weight.detach().float().contiguous()
        res[name + ".q1.scaling"] = torch.tensor([q.scaling[name]], dtype=torch.float32)
        print(f"weighted {name} ({kind}): r {pm.peft_config[name].r}, moves logits by "
              f"{rel(res['logits_' + name], res['base_logits']):.3f}")
    save_file(res, os.path.join(out, "expected.safetensors"))


def check_qtune(name):
    folder = os.path.join(OUT, name)
    exp = load_file(os.path.join(folder, "qtune_logits.safetensors"))
    import json
    base = json.load(open(os.path.join(folder, "adapter_config.json")))["base_model_name_or_path"]
    pm = PeftModel.from_pretrained(load_base(base), folder)
    pm.eval()
    with torch.no_grad():
        logits = pm(exp["ids"].long()).logits.float()
        with pm.disable_adapter():
            base_logits = pm(exp["ids"].long()).logits.float()
    e = rel(logits, exp["logits"])
    print(f"{name}: PEFT logits vs qtune logits relative error {e:.2e} "
          f"(adapter moves logits by {rel(base_logits, exp['logits']):.3f})")
    save_file({"ids": exp["ids"], "logits": logits.contiguous()}, os.path.join(folder, "peft_logits.safetensors"))
    return e


def main():
    os.chdir(ROOT)
    if "--check-qtune" in sys.argv:
        sys.exit(0 if check_qtune("qtune_written_ia3") <= 1e-5 else 1)
    make_ia3("ia3_default", "tests/fixtures/model/llama", IDS)
    make_ia3("ia3_bias", "tests/fixtures/model/llama_bias", IDS,
             target_modules=["q_proj", "o_proj", "up_proj", "down_proj"], feedforward_modules=["up_proj", "down_proj"])
    make_ia3("ia3_bundled", "models/qtune-tiny-8m", IDS_BUNDLED)
    make_weighted()


if __name__ == "__main__":
    main()
