#!/usr/bin/env python3
"""Regenerates tests/fixtures/model/: tiny random Llama-family checkpoints made with transformers, plus
the outputs HF computes for them (logits for fixed ids, greedy generations), so qtune's C++ model can be
checked against HF without network access or big files.

Folders written (each < 1 MB):
  llama/       LlamaForCausalLM, GQA (4 q heads, 2 kv heads), rope_scaling llama3, untied lm_head, f32;
               config.json in the classic hub format (rope_theta + rope_scaling)
  llama_bf16/  the same weights stored as BF16 (expected logits: HF f32 forward of the bf16-rounded weights)
  llama_bias/  LlamaForCausalLM with attention_bias (q/k/v/o) and mlp_bias, one kv head, tied embeddings
  mistral/     MistralForCausalLM, GQA, rope_scaling linear (factor 2), f32, classic format
  qwen2/       Qwen2ForCausalLM, q/k/v biases, tied embeddings, f32; config.json as transformers 5 writes
               it (rope_parameters); generation_config.json with an eos list that stops the greedy run
Each folder has expected.safetensors (ids I32 [1, T], logits F32 [1, T, V], batch_ids I32 [2, T2],
batch_logits F32 [2, T2, V]) and expected.json (prompt, greedy tokens, eos case, margins).

Weights are re-drawn with larger scales than HF's init (std 0.02 makes all logits nearly equal, so a greedy
argmax would hinge on rounding noise); every greedy step is checked to have a clear top-1 margin.

Usage: python3 tools/make_model_fixtures.py [out_dir]   (CPU torch + transformers; deterministic)
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests",
                                                         "fixtures", "model")
MAX_NEW = 20
MIN_MARGIN = 1e-3  # smallest allowed gap between the top-2 logits at a greedy step


def reinit(model, seed, embed_std):
    """Seeded weights with O(1) activations: linear ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1²), biases N(0, 0.3²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def classic_rope_format(folder):
    """Rewrites transformers 5's rope_parameters as the hub's classic rope_theta + rope_scaling."""
    path = os.path.join(folder, "config.json")
    cfg = json.load(open(path))
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rp
    json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)


def greedy(model, prompt, eos_ids):
    """HF greedy generate; returns (new tokens, smallest top-1 margin over the steps)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW,
                         eos_token_id=eos_ids, pad_token_id=eos_ids[0], output_logits=True,
                         return_dict_in_generate=True)
    new = out.sequences[0, len(prompt):].tolist()
    margin = min(float(torch.topk(l[0], 2).values[0] - torch.topk(l[0], 2).values[1]) for l in out.logits)
    return new, margin


def expected_outputs(folder, seed, vocab, gen=True, eos_case=False):
    """Loads the folder back with HF (what is on disk is what is tested) and records its outputs."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 1000)
    ids = torch.randint(0, vocab, (1, 40), generator=g)
    batch_ids = torch.randint(0, vocab, (2, 13), generator=g)
    with torch.no_grad():
        logits = model(ids).logits.float().contiguous()
        batch_logits = model(batch_ids).logits.float().contiguous()
    save_file({"ids": ids.to(torch.int32), "logits": logits, "batch_ids": batch_ids.to(torch.int32),
               "batch_logits": batch_logits}, os.path.join(folder, "expected.safetensors"))
    info = {"note": "made by tools/make_model_fixtures.py"}
    if gen:
        prompt = ids[0, :7].tolist()
        # An eos id that the greedy run never produces, so it runs to max_new_tokens.
        new, margin = greedy(model, prompt, [model.config.eos_token_id])
        assert len(new) == MAX_NEW, f"{folder}: eos {model.config.eos_token_id} stopped the run early"
        assert margin > MIN_MARGIN, f"{folder}: greedy margin {margin} too small; pick another seed"
        info.update(prompt=prompt, max_new_tokens=MAX_NEW, greedy=new, greedy_min_margin=margin,
                    eos_token_id=model.config.eos_token_id)
        if eos_case:
            # Stop on a token whose first appearance is at step >= 2 (the latest such step).
            stop_at = max(i for i in range(2, MAX_NEW) if new[i] not in new[:i])
            eos_list = [vocab - 1 if new.count(vocab - 1) == 0 else vocab - 2, new[stop_at]]
            assert eos_list[0] not in new
            stopped, _ = greedy(model, prompt, eos_list)
            assert stopped == new[:stop_at + 1], (stopped, new)
            info.update(eos_ids=eos_list, eos_greedy=stopped)
            with open(os.path.join(folder, "generation_config.json"), "w") as f:
                json.dump({"bos_token_id": model.config.bos_token_id, "eos_token_id": eos_list,
                           "do_sample": False}, f, indent=2)
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(info, f, indent=1)


def save(model, folder, dtype=torch.float32):
    if os.path.exists(folder):
        shutil.rmtree(folder)
    model.to(dtype).save_pretrained(folder)
    gc = os.path.join(folder, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)  # the config's eos_token_id rules unless a test fixture writes its own


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)

    # Llama 3 style: GQA, llama3 rope scaling, untied head.
    llama_cfg = LlamaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=381, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 256})
    llama = LlamaForCausalLM(llama_cfg).eval()
    reinit(llama, seed=11, embed_std=1.0)
    save(llama, os.path.join(OUT, "llama"))
    classic_rope_format(os.path.join(OUT, "llama"))
    expected_outputs(os.path.join(OUT, "llama"), 11, 384)
    save(llama, os.path.join(OUT, "llama_bf16"), torch.bfloat16)
    classic_rope_format(os.path.join(OUT, "llama_bf16"))
    expected_outputs(os.path.join(OUT, "llama_bf16"), 11, 384, gen=False)

    # Llama with every optional bias (attention_bias: q/k/v/o, mlp_bias), one kv head (MQA), tied head.
    bias_cfg = LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attention_bias=True, mlp_bias=True, bos_token_id=1, eos_token_id=255, rope_theta=500000.0)
    llama_bias = LlamaForCausalLM(bias_cfg).eval()
    reinit(llama_bias, seed=44, embed_std=0.1)
    save(llama_bias, os.path.join(OUT, "llama_bias"))
    classic_rope_format(os.path.join(OUT, "llama_bias"))
    expected_outputs(os.path.join(OUT, "llama_bias"), 44, 256)

    # Mistral: GQA, linear rope scaling.
    mistral_cfg = MistralConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=297, rope_theta=1000000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0}, sliding_window=4096)
    mistral = MistralForCausalLM(mistral_cfg).eval()
    reinit(mistral, seed=22, embed_std=1.0)
    save(mistral, os.path.join(OUT, "mistral"))
    classic_rope_format(os.path.join(OUT, "mistral"))
    expected_outputs(os.path.join(OUT, "mistral"), 22, 300)

    # Qwen2: q/k/v biases, tied embeddings; transformers 5's config format; generation_config eos list.
    qwen_cfg = Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=509, rope_theta=1000000.0, use_sliding_window=False)
    qwen = Qwen2ForCausalLM(qwen_cfg).eval()
    reinit(qwen, seed=34, embed_std=0.15)
    save(qwen, os.path.join(OUT, "qwen2"))
    expected_outputs(os.path.join(OUT, "qwen2"), 34, 512, eos_case=True)

    for d in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, d)
        if os.path.isdir(p):
            size = sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
            print(f"{d}: {size / 1e6:.2f} MB: {sorted(os.listdir(p))}")




def bundled(repo_root):
    """Expected outputs of the bundled pretrained model (models/qtune-tiny-8m, BF16) under HF's f32 forward:
    the last 8 positions' logits for the first 96 tokens of its held-out text, and a greedy run of 32 tokens.
    Recorded with checksums of its weights, so a retrained model is noticed rather than silently compared."""
    import hashlib
    from transformers import AutoTokenizer
    src = os.path.join(repo_root, "models", "qtune-tiny-8m")
    if not os.path.exists(os.path.join(src, "model.safetensors")):
        print("no bundled model; skipped")
        return
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    text = open(os.path.join(src, "heldout.txt"), encoding="utf-8").read()[:2000]
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:96]])
    with torch.no_grad():
        logits = model(ids).logits.float()
    prompt = ids[0, :16].tolist()
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 16, dtype=torch.long),
                         do_sample=False, max_new_tokens=32, eos_token_id=[1], pad_token_id=2, output_logits=True,
                         return_dict_in_generate=True)
    new = out.sequences[0, 16:].tolist()
    margin = min(float(torch.topk(l[0], 2).values[0] - torch.topk(l[0], 2).values[1]) for l in out.logits)
    raw = open(os.path.join(src, "model.safetensors"), "rb").read()
    sha = hashlib.sha256(raw).hexdigest()
    # A checksum the C++ test recomputes cheaply: the sum of the little-endian u32 words (zero-padded) mod 2^64.
    import numpy as np
    words = np.frombuffer(raw + b"\0" * (-len(raw) % 4), dtype="<u4").astype(np.uint64)
    checksum = int(words.sum(dtype=np.uint64))
    save_file({"ids": ids.to(torch.int32), "last_logits": logits[:, -8:].contiguous()},
              os.path.join(OUT, "bundled_expected.safetensors"))
    with open(os.path.join(OUT, "bundled_expected.json"), "w") as f:
        json.dump({"model": "models/qtune-tiny-8m", "weights_sha256": sha, "weights_bytes": len(raw),
                   "weights_u32_sum": checksum, "prompt": prompt, "greedy": new,
                   "greedy_min_margin": margin, "stopped_early": len(new) < 32}, f, indent=1)
    print("bundled:", len(new), "tokens, margin", margin)


if __name__ == "__main__":
    main()
    bundled(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
