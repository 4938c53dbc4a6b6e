"""The transformers side of the generation benchmark: prefill and decode tokens/s of a model folder on
random ids, batch 1, bf16, SDPA attention, greedy decoding with the KV cache. Prints one JSON line, like
`qtune bench`. Also measures the GPU's device-to-device copy bandwidth (bytes read + written), the
ceiling decode is compared against.
    python3 bench/hf_generate.py --model DIR --prompt-len 512 --new-tokens 128
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def copy_bandwidth(nbytes=4 << 30, reps=10):
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return 2 * nbytes / times[len(times) // 2]


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--load-in-4bit", action="store_true",
                    help="bitsandbytes NF4 + double quant, bf16 compute (needs bitsandbytes)")
    ap.add_argument("--load-in-8bit", action="store_true",
                    help="bitsandbytes LLM.int8, threshold 6.0 (needs bitsandbytes)")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    bw = copy_bandwidth() if cuda else None
    t0 = time.time()
    # GPU: bf16 as qtune's CUDA path; CPU: f32 as qtune's CPU path.
    kw = {}
    if args.load_in_4bit:
        from transformers import BitsAndBytesConfig
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.bfloat16)
    elif args.load_in_8bit:
        from transformers import BitsAndBytesConfig
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map=args.device, attn_implementation="sdpa", **kw)
    model.eval()
    load_s = time.time() - t0
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    embed_bytes = model.model.embed_tokens.weight.numel() * 2
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=g).to(args.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    best_prefill, best_decode = 1e30, 1e30
    for r in range(args.repeat + 1):
        sync()
        t = time.perf_counter()
        model(ids, use_cache=True, logits_to_keep=1)
        sync()
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(ids, do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                             pad_token_id=0)
        sync()
        total = time.perf_counter() - t
        n = out.shape[1] - ids.shape[1]
        decode = (total - prefill) / max(n - 1, 1)
        if r == 0:
            continue
        best_prefill, best_decode = min(best_prefill, prefill), min(best_decode, decode)
    print(json.dumps(dict(impl="transformers", torch=torch.__version__, device=args.device,
                          threads=torch.get_num_threads(), prompt_len=args.prompt_len,
                          new_tokens=args.new_tokens, load_seconds=load_s,
                          prefill_tokens_per_s=args.prompt_len / best_prefill, decode_tokens_per_s=1 / best_decode,
                          decode_ms_per_token=best_decode * 1e3, copy_bandwidth_bytes_per_s=bw,
                          weight_bytes=weight_bytes, decode_bytes_per_token=weight_bytes - embed_bytes,
                          peak_gpu_bytes=torch.cuda.max_memory_allocated() if cuda else 0)), flush=True)


if __name__ == "__main__":
    main()
