"""The anchor for bench/qlora_e2e.sh: transformers + peft (+ bitsandbytes) fine-tuning speed and memory.

Loads the HF folder as the QLoRA recipe does (NF4 + double quant, bf16 compute, prepare_model_for_kbit_training,
paged 8-bit AdamW) or as bf16 LoRA (fused AdamW), LoRA r=16 / alpha 32 on all seven linear projections,
SDPA attention, batch 1, training mode, and times optimizer steps on random token ids. Prints one JSON line.
    python3 bench/hf_qlora.py --model /tmp/llama3-8b-random --mode qlora --seq 2048 --steps 6 --checkpointing 1
"""
import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["qlora", "lora"], default="qlora")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--checkpointing", type=int, default=1)
    ap.add_argument("--memory-gib", type=float, default=0,
                    help="cap the caching allocator (set_per_process_memory_fraction) to see what fits a smaller card")
    args = ap.parse_args()
    if args.memory_gib:
        torch.cuda.set_per_process_memory_fraction(args.memory_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    t0 = time.time()
    kw = dict(dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0})
    if args.mode == "qlora":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(args.model, **kw)
    if args.mode == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(args.checkpointing))
    elif args.checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if args.checkpointing:
        model.config.use_cache = False
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if args.mode == "qlora":
        import bitsandbytes as bnb
        opt = bnb.optim.PagedAdamW8bit(params, lr=2e-4)
    else:
        opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
    load_s = time.time() - t0
    vocab = model.config.vocab_size
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, vocab, (1, args.seq), device="cuda", generator=g)
        torch.cuda.synchronize()
        t = time.time()
        try:
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
        except torch.cuda.OutOfMemoryError:
            print(json.dumps({"stack": "hf", "mode": args.mode, "seq": args.seq, "memory_gib": args.memory_gib,
                              "fits": False, "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}),
                  flush=True)
            return
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.time() - t)
        losses.append(out.loss.item())
    tok_s = args.seq * len(times) / sum(times)
    print(json.dumps({"stack": "hf", "mode": args.mode, "checkpointing": args.checkpointing, "seq": args.seq,
                      "memory_gib": args.memory_gib, "fits": True,
                      "tokens_per_s": round(tok_s, 1), "step_s": round(sum(times) / len(times), 4),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      "trainable": sum(p.numel() for p in params), "load_s": round(load_s, 1),
                      "losses": [round(l, 4) for l in losses]}), flush=True)


if __name__ == "__main__":
    main()
