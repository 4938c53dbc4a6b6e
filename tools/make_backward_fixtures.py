#!/usr/bin/env python3
"""Gradient fixtures for qtune's backward passes (tests/train/model_grad_test.cpp).

For each tiny model of tests/fixtures/model (made by tools/make_model_fixtures.py) this runs transformers'
LlamaForCausalLM in float32 (eager attention), a forward over a fixed batch of ids, the summed
cross-entropy over labels that are already shifted (HF's convention: label t is the token at t + 1,
-100 ignored; some prompt positions and the last position of each row are ignored), divides by the count
of counted labels, and backpropagates. It saves, in tests/fixtures/backward/<model>.safetensors:
  ids     I32 [B, T]
  labels  I32 [B, T]  (already shifted)
  grad.<name>  F32, the gradient of the mean loss w.r.t. every parameter (tied weights appear once)
and in <model>.json the summed loss (float64), the count and the mean loss.

Usage: python3 tools/make_backward_fixtures.py   (needs torch, transformers, safetensors)
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "tests", "fixtures", "model")
OUT = os.path.join(ROOT, "tests", "fixtures", "backward")


def make(name, B, T, seed):
    model = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, name), dtype=torch.float32,
                                                 attn_implementation="eager")
    model.train()  # dropout is 0 in these configs; train mode as a trainer would run it
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = torch.full((B, T), -100, dtype=torch.long)
    labels[:, :-1] = ids[:, 1:]
    labels[0, :2] = -100  # a "prompt" that carries no loss
    labels[1, 3] = -100
    out = model(input_ids=ids)
    logits = out.logits.float()  # [B, T, V]
    loss_sum = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100,
                                                 reduction="sum")
    count = int((labels != -100).sum())
    (loss_sum / count).backward()
    tensors = {"ids": ids.to(torch.int32).contiguous(), "labels": labels.to(torch.int32).contiguous()}
    for pname, p in model.named_parameters():
        tensors["grad." + pname] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(OUT, name + ".safetensors"))
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump({"model": name, "batch": B, "seq": T, "loss_sum": float(loss_sum.detach().double()), "count": count,
                   "loss": float(loss_sum.detach()) / count, "torch": torch.__version__}, f, indent=1)
    print(name, "loss", float(loss_sum.detach()) / count, "count", count, "grads", len(tensors) - 2)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    make("llama", 2, 9, 1)       # GQA (2 query heads per kv head), llama3 rope scaling, untied head
    make("llama_bias", 2, 7, 2)  # attention + MLP biases, MQA, tied embeddings
