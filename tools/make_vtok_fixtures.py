#!/usr/bin/env python3
"""Prompt-learning and LLaMA-Adapter interop fixtures for src/peft (tests/peft/prompt_learning_test.cpp,
tests/train/prompt_train_test.cpp), made with the real peft + transformers on the CPU.

1. PEFT -> qtune: adapters on tests/fixtures/model/llama (hidden 64, 2 layers, 4 q heads / 2 kv heads of 16)
   with random non-trivial weights (PEFT's zero gate would hide every LLaMA-Adapter bug), saved by
   PeftModel.save_pretrained into tests/fixtures/peft/<name>/, plus expected.safetensors:
     ids I32 [2, T]            two prompts
     logits F32 [2, T, V]      PEFT's logits at the real tokens (prompt tuning: PEFT's logits[:, P:])
     logits_bf16               the same with the base model in bf16 (the CUDA test's reference error)
     greedy I32 [n]            PeftModel.generate(ids[0:1], greedy, max_new_tokens 12) new tokens
     greedy_bf16 I32 [n]       the same over the bf16 base
     labels I32 [2, T]         unshifted labels (= ids, some masked -100) for the training check:
     loss F32 [1]              PEFT's mean loss with those labels (training-mode PeftModel, f32)
     grad.<param>              d(loss)/d(each trainable PEFT parameter)
     param.<param>             the trainable parameters themselves (P-tuning's MLP, the prefix projection)
   prompt_tuning/  PROMPT_TUNING, 5 virtual tokens (random)
   prompt_text/    PROMPT_TUNING, TEXT init "the cat" with ids given (no tokenizer: the init is checked
                   from the ids PEFT's rule makes: expected.safetensors init_ids)
   p_tuning/       P_TUNING, MLP, 4 virtual tokens, encoder_hidden_size 24
   prefix/         PREFIX_TUNING, 6 virtual tokens (key/value rows of 2 kv heads x 16)
   prefix_proj/    PREFIX_TUNING, prefix_projection, encoder_hidden_size 24, 3 virtual tokens
   adaption/       ADAPTION_PROMPT, adapter_len 4, adapter_layers 2, random gates
   prefix_bundled/, prompt_bundled/, adaption_bundled/: the same kinds on the bundled model
   (models/qtune-tiny-8m) with expected.txt = PEFT's greedy text for "Once upon a time" (12 new tokens),
   for tests/cli/prompt_generate_test.sh (`qtune generate --adapter`).
2. qtune -> PEFT (`--check-qtune`): loads the qtune_written_{prompt,ptuning,prefix,adaption}/ folders the
   test PromptLearning.QtuneWrittenFixtures writes (QTUNE_REGEN_PEFT=1 build-*/test_peft
   --gtest_filter='*QtuneWrittenFixtures*'), with qtune's logits in qtune_logits.safetensors, through
   PeftModel.from_pretrained, and compares logits and greedy tokens (exits 1 above 1e-4 or on a token
   mismatch).

Run from the repository root:  python3 tools/make_vtok_fixtures.py [--check-qtune]
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from peft import (AdaptionPromptConfig, PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig,
                  get_peft_model)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = "tests/fixtures/peft"
BASE = "tests/fixtures/model/llama"
IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 250, 7, 64, 12], [1, 200, 31, 8, 8, 150, 77, 2, 19, 5]], dtype=torch.int32)
GREEDY_NEW = 12


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def load_base(dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(BASE, dtype=dtype, device_map="cpu")


def real_logits(pm, cfg_type, n_virtual, ids):
    out = pm(input_ids=ids.long()).logits.float()
    if cfg_type in ("PROMPT_TUNING", "P_TUNING"):
        out = out[:, n_virtual:]  # PEFT returns logits for the virtual positions too
    return out.contiguous()


def greedy(pm, ids, n=GREEDY_NEW):
    g = pm.generate(input_ids=ids[0:1].long(), attention_mask=torch.ones_like(ids[0:1]).long(),
                    max_new_tokens=n, do_sample=False)
    return g[0, ids.shape[1]:].to(torch.int32).contiguous()


def make(name, cfg, n_virtual, init_ids=None):
    torch.manual_seed(sum(map(ord, name)))
    model = load_base()
    pm = get_peft_model(model, cfg)
    peft_type = pm.peft_config["default"].peft_type.value
    g = torch.Generator().manual_seed(len(name))
    extra = {}
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if not p.requires_grad:
                continue
            if name == "prompt_text":
                pass  # keep PEFT's TEXT init: the test checks it
            elif "adaption_gate" in n:
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "mlp_head" in n or "transform" in n:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g))
    if init_ids is not None:
        extra["init_ids"] = torch.tensor(init_ids, dtype=torch.int32)
    # Training check: PEFT's loss and gradients in training mode, before saving.
    labels = IDS.long().clone()
    labels[0, 3:5] = -100
    labels[1, 6] = -100
    pm.train()
    out = pm(input_ids=IDS.long(), labels=labels)
    out.loss.backward()
    for n, p in pm.named_parameters():
        if p.requires_grad:
            extra["grad." + n] = p.grad.detach().float().contiguous()
            extra["param." + n] = p.detach().float().contiguous()
    pm.zero_grad()
    pm.eval()
    with torch.no_grad():
        logits = real_logits(pm, peft_type, n_virtual, IDS)
    greedy_ids = greedy(pm, IDS)
    out_dir = os.path.join(OUT, name)
    pm.save_pretrained(out_dir)
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # PEFT's reader, f32 base: reload check; bf16 base: the reference error of a bf16 engine.
    again = PeftModel.from_pretrained(load_base(), out_dir)
    again.eval()
    with torch.no_grad():
        l2 = real_logits(again, peft_type, n_virtual, IDS)
    bf = PeftModel.from_pretrained(load_base(torch.bfloat16), out_dir)
    bf.eval()
    with torch.no_grad():
        lbf = real_logits(bf, peft_type, n_virtual, IDS)
    greedy_bf = greedy(bf, IDS)
    with torch.no_grad():
        plain = load_base()(IDS.long()).logits.float()
    print(f"{name}: adapter moves logits by {rel(logits, plain):.3f}; reload err {rel(l2, logits):.1e}; "
          f"bf16 err {rel(lbf, logits):.2e}; greedy {greedy_ids.tolist()} (bf16 {greedy_bf.tolist()}); "
          f"loss {out.loss.item():.6f}")
    tensors = {"ids": IDS, "logits": logits, "logits_bf16": lbf.contiguous(), "greedy": greedy_ids,
               "greedy_bf16": greedy_bf, "labels": labels.to(torch.int32),
               "loss": out.loss.detach().reshape(1).float()}
    tensors.update(extra)
    save_file(tensors, os.path.join(out_dir, "expected.safetensors"))


def make_bundled(name, cfg):
    from transformers import AutoTokenizer
    base = "models/qtune-tiny-8m"
    torch.manual_seed(sum(map(ord, name)))
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), cfg)
    g = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.copy_((0.5 + 0.5 * torch.rand(p.shape, generator=g)) if "gate" in n else
                        0.5 * torch.randn(p.shape, generator=g))
    pm.eval()
    out_dir = os.path.join(OUT, name)
    pm.save_pretrained(out_dir)
    os.remove(os.path.join(out_dir, "README.md"))
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok("Once upon a time", return_tensors="pt")
    out = pm.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0], skip_special_tokens=True)
    with open(os.path.join(out_dir, "expected.txt"), "w") as f:
        f.write(text)
    print(f"{name}: {text!r}")


def check_qtune(name):
    folder = os.path.join(OUT, name)
    exp = load_file(os.path.join(folder, "qtune_logits.safetensors"))
    cfg = json.load(open(os.path.join(folder, "adapter_config.json")))
    pm = PeftModel.from_pretrained(load_base(), folder)
    pm.eval()
    n_virtual = cfg.get("num_virtual_tokens", 0)
    with torch.no_grad():
        logits = real_logits(pm, cfg["peft_type"], n_virtual, exp["ids"])
        plain = load_base()(exp["ids"].long()).logits.float()
    e = rel(logits, exp["logits"])
    tokens = greedy(pm, exp["ids"], exp["greedy"].numel())
    same = tokens.tolist() == exp["greedy"].tolist()
    print(f"{name}: PEFT vs qtune logits relative error {e:.2e} (adapter moves logits by "
          f"{rel(plain, exp['logits']):.3f}); greedy {'equal' if same else 'DIFFERENT'} {tokens.tolist()}")
    return e if same else 1.0


def main():
    os.chdir(ROOT)
    if "--check-qtune" in sys.argv:
        errs = [check_qtune(n) for n in ("qtune_written_prompt", "qtune_written_ptuning", "qtune_written_prefix",
                                         "qtune_written_adaption")]
        sys.exit(0 if max(errs) <= 1e-4 else 1)
    make("prompt_tuning", PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5), 5)
    # TEXT init needs a tokenizer: a stand-in whose ids are fixed, so the repeat/cut rule is what is tested.
    text_ids = [1, 77, 301]

    class FakeTok:
        def __call__(self, text):
            return {"input_ids": list(text_ids)}

    import transformers
    orig = transformers.AutoTokenizer.from_pretrained
    transformers.AutoTokenizer.from_pretrained = lambda *a, **k: FakeTok()
    try:
        make("prompt_text", PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=7, prompt_tuning_init="TEXT",
                                               prompt_tuning_init_text="the cat", tokenizer_name_or_path=BASE), 7,
             init_ids=text_ids)
    finally:
        transformers.AutoTokenizer.from_pretrained = orig
    make("p_tuning", PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=24), 4)
    make("prefix", PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6), 6)
    make("prefix_proj", PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True,
                                           encoder_hidden_size=24), 3)
    make("adaption", AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=2), 0)
    make_bundled("prefix_bundled", PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    make_bundled("prompt_bundled", PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    make_bundled("adaption_bundled", AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=3))


if __name__ == "__main__":
    main()
