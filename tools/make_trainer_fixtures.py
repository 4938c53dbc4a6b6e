#!/usr/bin/env python3
"""Fixtures for the SFT trainer (tests/train/trainer_*_test.cpp), made with transformers + peft on the CPU.

1. chat_templates.json: the Llama 3, Qwen2, Mistral (v0.3 style) and ChatML chat templates (written out
   here from the published tokenizer_config.json files) rendered by transformers' apply_chat_template
   (tokenize=False) for a few conversations, with and without add_generation_prompt, and the errors the
   templates raise (Mistral's role alternation).
2. loss_parity/: LoRA training of the tiny fixture model tests/fixtures/model/llama in f32 with PEFT:
   adapter_init/ (PEFT folder: q_proj,v_proj,down_proj r 4 alpha 8, random non-zero A and B), the batches
   (batches.safetensors: ids_S_M / labels_S_M I32 [2, 24] for step S, micro-batch M; HF labels, unshifted,
   −100 on prompt tokens), and expected.json: 20 per-step losses (Σ token CE over the step's 2 micro-batches
   / their target count), AdamW lr 1e-3 (betas 0.9/0.999, eps 1e-8, weight decay 0.01), linear schedule
   with 2 warmup steps over 20, clip_grad_norm_ 1.0.
   loss_parity_qlora/: QLoRA, the mistral fixture model quantized by bitsandbytes (NF4 + double quant,
   compute float32; every Linear's in_features a multiple of 64, see make_quant_model_fixtures.py), LoRA on
   q_proj,v_proj; qtune quantizes the same f32 weights while loading.
   loss_parity_dora/: the same as loss_parity with use_dora=True (magnitudes scaled by 1 + 0.2·N(0, 1) from PEFT's init).

Run from the repository root:  python3 tools/make_trainer_fixtures.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, get_linear_schedule_with_warmup

from peft import LoraConfig, PeftModel, get_peft_model

OUT = "tests/fixtures/train"

TEMPLATES = {
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "qwen2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "mistral": (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {%- set system_message = messages[0]['content'] %}\n"
        "    {%- set loop_messages = messages[1:] %}\n"
        "{%- else %}\n"
        "    {%- set loop_messages = messages %}\n"
        "{%- endif %}\n\n"
        "{{- bos_token }}\n"
        "{%- for message in loop_messages %}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{- raise_exception('After the optional system message, conversation roles must alternate "
        "user/assistant/user/assistant/...') }}\n"
        "    {%- endif %}\n"
        "    {%- if message['role'] == 'user' %}\n"
        "        {%- if loop.first and system_message is defined %}\n"
        "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
        "        {%- else %}\n"
        "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
        "        {%- endif %}\n"
        "    {%- elif message['role'] == 'assistant' %}\n"
        "        {{- ' ' + message['content'] + eos_token}}\n"
        "    {%- else %}\n"
        "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an "
        "initial optional system message!') }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
    ),
    "chatml": (
        "{% for message in messages %}\n"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "{{ '<|im_start|>assistant\n' }}\n"
        "{% endif %}"
    ),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi there. How can I help?"}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    [
        {"role": "user", "content": "Name a colour.\nOnly one."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another"},
        {"role": "assistant", "content": "Green!"},
    ],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],  # Mistral refuses this
]


def chat_fixtures():
    tok = PreTrainedTokenizerFast(tokenizer_file="models/qtune-tiny-8m/tokenizer.json", bos_token="<s>", eos_token="</s>")
    out = []
    for name, tmpl in TEMPLATES.items():
        cases = []
        for conv in CONVERSATIONS:
            for gen in (False, True):
                case = {"messages": conv, "add_generation_prompt": gen, "bos_token": "<s>", "eos_token": "</s>"}
                try:
                    case["expected"] = tok.apply_chat_template(conv, chat_template=tmpl, tokenize=False,
                                                               add_generation_prompt=gen)
                except Exception as e:  # jinja2 TemplateError from raise_exception
                    case["error"] = str(e)
                cases.append(case)
        out.append({"name": name, "template": tmpl, "cases": cases})
    with open(os.path.join(OUT, "chat_templates.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


def loss_parity(name="loss_parity", use_dora=False, qlora=False, base="llama", bias="none", modules_to_save=None,
                weight_decay=0.01, full=False):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    if qlora:  # bitsandbytes NF4 + double quant on the CPU, portable dequantize-then-matmul path
        from transformers import BitsAndBytesConfig
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained("tests/fixtures/model/mistral", dtype=torch.float32,
                                                     device_map="cpu", quantization_config=q)
        for m in model.modules():
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
    else:
        model = AutoModelForCausalLM.from_pretrained("tests/fixtures/model/" + base, dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    if full:  # full fine-tuning: every parameter of the model trains, no adapter (no adapter_init folder)
        pm = model
    else:
        pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                              target_modules=["q_proj", "v_proj"] if qlora else ["q_proj", "v_proj", "down_proj"],
                                              use_dora=use_dora, bias=bias, modules_to_save=modules_to_save))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.mul_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                elif p.requires_grad and "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        pm.save_pretrained(os.path.join(d, "adapter_init"))
    V = model.config.vocab_size
    steps, micro, B, T = 20, 2, 2, 24
    batches = {}
    for s in range(steps):
        for m in range(micro):
            ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int32)
            labels = ids.clone()
            plen = torch.randint(2, 12, (B,), generator=g)
            for b in range(B):
                labels[b, : plen[b]] = -100
            batches[f"ids_{s}_{m}"] = ids
            batches[f"labels_{s}_{m}"] = labels
    save_file(batches, os.path.join(d, "batches.safetensors"))
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    sched = get_linear_schedule_with_warmup(opt, 2, steps)
    pm.train()
    losses, norms = [], []
    for s in range(steps):
        total = sum(int((batches[f"labels_{s}_{m}"][:, 1:] != -100).sum()) for m in range(micro))
        step_loss = 0.0
        for m in range(micro):
            ids = batches[f"ids_{s}_{m}"].long()
            labels = batches[f"labels_{s}_{m}"].long()
            logits = pm(input_ids=ids).logits
            l = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
            (l / total).backward()
            step_loss += l.item()
        norms.append(torch.nn.utils.clip_grad_norm_(params, 1.0).item())
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(step_loss / total)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"losses": losses, "grad_norms": norms, "lr": 1e-3, "warmup_steps": 2, "steps": steps,
                   "weight_decay": weight_decay, "max_grad_norm": 1.0}, f, indent=1)
    print(name, losses[0], "->", losses[-1])


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    chat_fixtures()
    loss_parity()
    loss_parity("loss_parity_dora", use_dora=True)
    loss_parity("loss_parity_qlora", qlora=True)
    # Trained biases (torch decays every parameter: no decay here, as qtune never decays biases) and
    # modules_to_save on an untied model (lm_head and the embedding as full trained copies).
    loss_parity("loss_parity_bias", base="llama_bias", bias="all", weight_decay=0.0)
    loss_parity("loss_parity_mts", modules_to_save=["lm_head", "embed_tokens"])
    # Full fine-tuning (no decay: torch would decay the norms, which qtune excludes as TRL does).
    loss_parity("loss_parity_full", full=True, weight_decay=0.0)
