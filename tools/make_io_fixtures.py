#!/usr/bin/env python3
"""Regenerates tests/fixtures/io/ (small files for tests/io/*_test.cpp) with safetensors, torch and
transformers:

  py_mixed.safetensors      tensors of every dtype qtune reads, values given by formulas the C++ test
                            recomputes, written by the reference library (header order, padding, metadata)
  tiny_llama/               a randomly initialised 2-layer LlamaForCausalLM saved by transformers in bf16,
                            sharded (model.safetensors.index.json + shards) with its config.json;
                            tiny_llama/expected.json lists every tensor's dtype, shape and f32 sum
  configs/<case>/config.json  config.json variants (transformers 5 and 4.x layouts, absent fields);
  configs/expected.json     what transformers resolves for each (defaults, head_dim, rope, biases)

Usage: python3 tools/make_io_fixtures.py [out_dir]   (default: tests/fixtures/io)
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "io")


def mixed_tensors():
    """Values the C++ test recomputes: v[i] = (i % 7) * 0.25 - 0.75 (exact in every float dtype)."""
    def vals(n):
        return np.array([(i % 7) * 0.25 - 0.75 for i in range(n)], dtype=np.float64)

    return {
        "w_f32": torch.tensor(vals(6), dtype=torch.float32).reshape(2, 3),
        "w_bf16": torch.tensor(vals(12), dtype=torch.bfloat16).reshape(3, 4),
        "w_f16": torch.tensor(vals(5), dtype=torch.float16),
        "w_f64": torch.tensor(vals(1), dtype=torch.float64).reshape(()),
        "ids_i64": torch.arange(-2, 2, dtype=torch.int64),
        "ids_i32": torch.arange(0, 6, dtype=torch.int32).reshape(3, 2),
        "q_i8": torch.tensor([-128, -1, 0, 1, 127], dtype=torch.int8),
        "q_u8": torch.tensor([0, 1, 254, 255], dtype=torch.uint8),
        "mask_bool": torch.tensor([True, False, True]),
        "empty_f32": torch.zeros(0, 4, dtype=torch.float32),
    }


def make_mixed():
    save_file(mixed_tensors(), os.path.join(OUT, "py_mixed.safetensors"), metadata={"format": "pt"})


def make_tiny_llama():
    d = os.path.join(OUT, "tiny_llama")
    shutil.rmtree(d, ignore_errors=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(d, max_shard_size="10KB")
    from safetensors import safe_open
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    expected = {}
    for name, shard in sorted(index["weight_map"].items()):
        with safe_open(os.path.join(d, shard), "pt") as f:
            t = f.get_tensor(name)
        expected[name] = {"file": shard, "dtype": str(t.dtype), "shape": list(t.shape),
                          "sum": float(t.float().sum()), "first": float(t.flatten()[0].float())}
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)


def config_cases():
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=100)
    return {
        # transformers 5 layout: rope_parameters holds rope_theta and llama3 scaling; "dtype".
        "llama_v5_llama3": ("save", LlamaConfig(num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=16384, dtype="bfloat16",
                                                rope_parameters={"rope_type": "llama3", "factor": 8.0,
                                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 8192,
                                                                 "rope_theta": 500000.0},
                                                **small), "LlamaForCausalLM"),
        # transformers 4.x layout (as Llama 3.2 ships it): top-level rope_theta, rope_scaling, torch_dtype.
        "llama_v4_style": ("dict", dict(architectures=["LlamaForCausalLM"], model_type="llama",
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                        max_position_embeddings=131072, rope_theta=500000.0,
                                        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                                        torch_dtype="bfloat16", tie_word_embeddings=True, bos_token_id=128000,
                                        eos_token_id=[128001, 128008, 128009], rms_norm_eps=1e-5,
                                        hidden_act="silu", transformers_version="4.45.0", **small), None),
        # Llama with every bias, old-style {"type": "linear"}, kv heads and head_dim absent.
        "llama_bias_linear": ("dict", dict(architectures=["LlamaForCausalLM"], model_type="llama",
                                           num_attention_heads=8, attention_bias=True, mlp_bias=True,
                                           rope_scaling={"type": "linear", "factor": 2.0}, **small), None),
        # Mistral with only the required fields: class defaults for kv heads, window, positions.
        "mistral_defaults": ("dict", dict(architectures=["MistralForCausalLM"], model_type="mistral",
                                          num_attention_heads=16, **small), None),
        "qwen2_v5": ("save", Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **small),
                     "Qwen2ForCausalLM"),
        # Qwen2 4.x style with tied embeddings and the sliding window switched on.
        "qwen2_tied_sliding": ("dict", dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                                            num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                                            tie_word_embeddings=True, use_sliding_window=True,
                                            sliding_window=1024, max_window_layers=0, eos_token_id=151645,
                                            bos_token_id=151643, torch_dtype="float16", rope_scaling=None,
                                            **small), None),
    }


def resolved(cfg, model):
    rp = cfg.rope_parameters or {}
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    eos = cfg.eos_token_id
    eos = [] if eos is None else (eos if isinstance(eos, list) else [eos])
    sliding = getattr(cfg, "sliding_window", None)
    return {
        "architecture": type(model).__name__, "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": attn.head_dim, "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": rp.get("rope_theta"), "rope_type": rp.get("rope_type", "default"),
        "rope_factor": rp.get("factor", 1.0), "low_freq_factor": rp.get("low_freq_factor", 1.0),
        "high_freq_factor": rp.get("high_freq_factor", 4.0),
        "original_max_position_embeddings": rp.get("original_max_position_embeddings", 8192),
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "q_bias": attn.q_proj.bias is not None, "k_bias": attn.k_proj.bias is not None,
        "v_bias": attn.v_proj.bias is not None, "o_bias": attn.o_proj.bias is not None,
        "mlp_bias": mlp.gate_proj.bias is not None,
        "bos_token_id": -1 if cfg.bos_token_id is None else cfg.bos_token_id, "eos_token_ids": eos,
        "pad_token_id": -1 if cfg.pad_token_id is None else cfg.pad_token_id,
        "sliding_window": 0 if sliding is None else sliding,
    }


def make_configs():
    root = os.path.join(OUT, "configs")
    shutil.rmtree(root, ignore_errors=True)
    expected = {}
    for name, (kind, obj, arch) in config_cases().items():
        d = os.path.join(root, name)
        os.makedirs(d)
        if kind == "save":
            obj.architectures = [arch]
            obj.save_pretrained(d)
        else:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(obj, f, indent=2)
        cfg = AutoConfig.from_pretrained(d)
        model = AutoModelForCausalLM.from_config(cfg)
        expected[name] = resolved(cfg, model)
    with open(os.path.join(root, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    make_mixed()
    make_tiny_llama()
    make_configs()
    print("wrote", os.path.abspath(OUT))
