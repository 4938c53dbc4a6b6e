#!/usr/bin/env python3
"""Converts a llama2.c checkpoint (legacy .bin, e.g. stories260K.bin) to a Hugging Face LlamaForCausalLM folder,
checks the conversion against an independent float64 llama2.c forward, and writes qtune's test fixtures.

Why: stories260K is the one real pretrained Llama we have; its logits and greedy output, computed by
transformers on the converted folder, let qtune's model code be checked on real (not random) weights.

llama2.c legacy format: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
negative vocab_size means the classifier is NOT shared with the embedding), then float32 arrays, every
matrix stored as [out, in] row-major (like torch.nn.Linear.weight):
  token_embedding [V, D]; rms_att [L, D]; wq [L, D, D]; wk [L, KVD, D]; wv [L, KVD, D]; wo [L, D, D];
  rms_ffn [L, D]; w1 [L, F, D]; w2 [L, D, F]; w3 [L, F, D]; rms_final [D];
  freq_cis_real [S, hs/2]; freq_cis_imag [S, hs/2]; then wcls [V, D] only if not shared.
RoPE: llama2.c rotates interleaved pairs (x[2i], x[2i+1]) of each head; HF rotates (x[i], x[i + hs/2])
("rotate_half"). So the rows of wq and wk are permuted inside every head: new row (t*hs/2 + i) = old row
(2i + t), t in {0, 1} — the same permutation as transformers' convert_llama_weights_to_hf.py `permute`
(view(heads, hs/2, 2, in).transpose(1, 2)). Names: w1 -> gate_proj, w3 -> up_proj, w2 -> down_proj.

Outputs (--out, default tests/fixtures/stories260K):
  config.json, generation_config.json, model.safetensors   the HF folder (float32, tied embeddings)
  expected.safetensors   ids I32 [1, 48] (BOS + 47 tokens sampled from the model, seed 0),
                         logits F32 [1, 48, 512] (transformers, float32, eager attention)
  expected.json          prompt (first 8 ids), max_new_tokens 40, greedy (transformers generate,
                         do_sample=False, the new ids only), greedy_min_margin (smallest top-1 minus top-2
                         logit gap along the greedy path), eos_token_id, bos_token_id, checks done here

Usage: python3 tools/convert_llama2c.py [--bin ../shared/data/models/stories260K/stories260K.bin] [--out DIR]
"""
import argparse
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


def read_llama2c(path):
    """Returns (header dict, dict of float32 numpy arrays in llama2.c's shapes)."""
    raw = open(path, "rb").read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = (int(v) for v in np.frombuffer(raw[:28], np.int32))
    shared = vocab > 0
    vocab = abs(vocab)
    hs = dim // n_heads
    kvd = n_kv * hs
    f = np.frombuffer(raw[28:], np.float32)
    shapes = [("emb", (vocab, dim)), ("rms_att", (n_layers, dim)), ("wq", (n_layers, dim, dim)),
              ("wk", (n_layers, kvd, dim)), ("wv", (n_layers, kvd, dim)), ("wo", (n_layers, dim, dim)),
              ("rms_ffn", (n_layers, dim)), ("w1", (n_layers, hidden, dim)), ("w2", (n_layers, dim, hidden)),
              ("w3", (n_layers, hidden, dim)), ("rms_final", (dim,)), ("freq_real", (seq_len, hs // 2)),
              ("freq_imag", (seq_len, hs // 2))]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    w, off = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        if off + n > f.size:
            raise ValueError(f"{path}: file ends inside tensor '{name}' (needs {n} floats at float offset {off}, "
                             f"has {f.size})")
        w[name] = f[off:off + n].reshape(shape).copy()
        off += n
    if off != f.size:
        raise ValueError(f"{path}: {f.size - off} floats left after the last tensor (header {dim},{hidden},"
                         f"{n_layers},{n_heads},{n_kv},{vocab},{seq_len})")
    if shared:
        w["wcls"] = w["emb"]
    hdr = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv, vocab=vocab,
               seq_len=seq_len, shared=shared, hs=hs)
    return hdr, w


def rope_theta_from_table(hdr, w):
    """The theta that reproduces llama2.c's stored freq_cis table (checked to 1e-5)."""
    hs, S = hdr["hs"], hdr["seq_len"]
    for theta in (10000.0, 500000.0, 1000000.0):
        freq = theta ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)  # [hs/2]
        ang = np.arange(S, dtype=np.float64)[:, None] * freq[None, :]  # [S, hs/2]
        if (np.abs(np.cos(ang) - w["freq_real"]).max() < 1e-5 and np.abs(np.sin(ang) - w["freq_imag"]).max() < 1e-5):
            return theta
    raise ValueError("the freq_cis table matches no known rope theta")


def permute_rows(m, heads):
    """Interleaved-pair rows -> rotate_half rows, per head: [heads*hs, in]."""
    out_dim, in_dim = m.shape
    return m.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def to_hf(hdr, w, theta):
    config = LlamaConfig(vocab_size=hdr["vocab"], hidden_size=hdr["dim"], intermediate_size=hdr["hidden"],
                         num_hidden_layers=hdr["n_layers"], num_attention_heads=hdr["n_heads"],
                         num_key_value_heads=hdr["n_kv"], max_position_embeddings=hdr["seq_len"],
                         rms_norm_eps=1e-5, rope_theta=theta, hidden_act="silu",
                         tie_word_embeddings=hdr["shared"], bos_token_id=1, eos_token_id=2,
                         attention_bias=False, mlp_bias=False)
    sd = {"model.embed_tokens.weight": w["emb"], "model.norm.weight": w["rms_final"]}
    if not hdr["shared"]:
        sd["lm_head.weight"] = w["wcls"]
    for l in range(hdr["n_layers"]):
        p = f"model.layers.{l}."
        sd[p + "input_layernorm.weight"] = w["rms_att"][l]
        sd[p + "self_attn.q_proj.weight"] = permute_rows(w["wq"][l], hdr["n_heads"])
        sd[p + "self_attn.k_proj.weight"] = permute_rows(w["wk"][l], hdr["n_kv"])
        sd[p + "self_attn.v_proj.weight"] = w["wv"][l]
        sd[p + "self_attn.o_proj.weight"] = w["wo"][l]
        sd[p + "post_attention_layernorm.weight"] = w["rms_ffn"][l]
        sd[p + "mlp.gate_proj.weight"] = w["w1"][l]
        sd[p + "mlp.up_proj.weight"] = w["w3"][l]
        sd[p + "mlp.down_proj.weight"] = w["w2"][l]
    return config, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def llama2c_forward(hdr, w, ids):
    """llama2.c's math in float64 straight from the .bin arrays (interleaved RoPE from the stored table).
    ids: list of T ints -> logits [T, V]."""
    D, H, KV, hs, L = hdr["dim"], hdr["n_heads"], hdr["n_kv"], hdr["hs"], hdr["n_layers"]
    g = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(ids)

    def rmsnorm(x, weight):  # [T, D]
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * weight

    def rope(x, heads):  # [T, heads*hs], pairs (2i, 2i+1) of each head
        x = x.reshape(T, heads, hs // 2, 2)
        c = g["freq_real"][:T][:, None, :]  # [T, 1, hs/2]
        s = g["freq_imag"][:T][:, None, :]
        a, b = x[..., 0], x[..., 1]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(T, heads * hs)

    x = g["emb"][ids]  # [T, D]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(L):
        xb = rmsnorm(x, g["rms_att"][l])
        q = rope(xb @ g["wq"][l].T, H).reshape(T, H, hs)
        k = rope(xb @ g["wk"][l].T, KV).reshape(T, KV, hs)
        v = (xb @ g["wv"][l].T).reshape(T, KV, hs)
        out = np.empty((T, H, hs))
        for h in range(H):
            kh = h // (H // KV)
            sc = q[:, h] @ k[:, kh].T / np.sqrt(hs) + mask  # [T, T]
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            out[:, h] = (sc / sc.sum(-1, keepdims=True)) @ v[:, kh]
        x = x + out.reshape(T, D) @ g["wo"][l].T
        xb = rmsnorm(x, g["rms_ffn"][l])
        a = xb @ g["w1"][l].T
        x = x + ((a / (1 + np.exp(-a))) * (xb @ g["w3"][l].T)) @ g["w2"][l].T
    return rmsnorm(x, g["rms_final"]) @ g["wcls"].T


def rel_err(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(root, "..", "shared", "data", "models", "stories260K",
                                                  "stories260K.bin"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "stories260K"))
    args = ap.parse_args()

    hdr, w = read_llama2c(args.bin)
    theta = rope_theta_from_table(hdr, w)
    print(f"header {hdr}, rope theta {theta}")
    config, sd = to_hf(hdr, w, theta)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (hdr["shared"] and k == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)

    # Reload the written folder, as a user would, and compare with the float64 llama2.c forward.
    hf = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = hf.generate(torch.tensor([[1]]), max_new_tokens=47, min_new_tokens=47, do_sample=True,
                              temperature=1.0, top_k=0, top_p=1.0)
        ids = sampled[0].tolist()  # BOS + 47 sampled ids
        logits = hf(input_ids=torch.tensor([ids])).logits  # [1, T, V]
    ref = llama2c_forward(hdr, w, ids)  # [T, V]
    err = rel_err(logits[0].numpy(), ref)
    print(f"logits: transformers (converted folder, f32) vs float64 llama2.c forward, relative error {err:.3g}")
    assert err < 1e-5, err
    # Negative control: without the RoPE row permutation the same comparison must fail clearly.
    bad = LlamaForCausalLM(config).eval()
    bad_sd = dict(sd)
    for l in range(hdr["n_layers"]):
        bad_sd[f"model.layers.{l}.self_attn.q_proj.weight"] = torch.from_numpy(w["wq"][l])
        bad_sd[f"model.layers.{l}.self_attn.k_proj.weight"] = torch.from_numpy(w["wk"][l])
    bad.load_state_dict(bad_sd, strict=False)
    bad.tie_weights()
    with torch.no_grad():
        bad_err = rel_err(bad(input_ids=torch.tensor([ids])).logits[0].numpy(), ref)
    print(f"negative control: unpermuted wq/wk give relative error {bad_err:.3g}")
    assert bad_err > 1e-2, bad_err

    prompt, max_new = ids[:8], 40
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                          output_scores=True, return_dict_in_generate=True)
    greedy = out.sequences[0, len(prompt):].tolist()
    margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    # The same greedy path with the float64 reference (argmax of the full forward at each step).
    seq = list(prompt)
    for _ in range(len(greedy)):
        seq.append(int(np.argmax(llama2c_forward(hdr, w, seq)[-1])))
    assert seq[len(prompt):] == greedy, (seq[len(prompt):], greedy)
    print(f"greedy: {len(greedy)} new ids, same as the float64 reference; min top-2 margin {min(margins):.4f}")

    save_file({"ids": torch.tensor([ids], dtype=torch.int32), "logits": logits.float().contiguous()},
              os.path.join(args.out, "expected.safetensors"))
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump({"note": "made by tools/convert_llama2c.py from stories260K.bin (llama2.c, TinyStories)",
                   "prompt": prompt, "max_new_tokens": max_new, "greedy": greedy,
                   "greedy_min_margin": min(margins), "bos_token_id": 1, "eos_token_id": 2,
                   "logits_rel_err_vs_float64_llama2c": err}, f, indent=1)


if __name__ == "__main__":
    main()
