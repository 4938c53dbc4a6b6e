"""Write a randomly initialised Llama-family checkpoint with transformers' save_pretrained (bf16).

Used by the GPU benchmarks: both transformers and qtune then load the same folder. Weights are
initialised on the GPU (initialising 8B parameters on the CPU takes minutes).
    python3 bench/make_random_llama.py --shape llama3-8b --out /tmp/llama3-8b
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    # Llama-3-8B: 32 layers, hidden 4096, MLP 14336, 32 heads / 8 KV heads, vocab 128256.
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False),
    "llama3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=True),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.time()
    cfg = LlamaConfig(**SHAPES[args.shape])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    # Default init gives std 0.02 everywhere; logits stay finite through 32 layers.
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="5GB")
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.shape} ({n / 1e9:.2f}B params) to {args.out} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
