#!/usr/bin/env python3
"""Golden files for src/optim (tests/optim): torch.optim.AdamW, bitsandbytes AdamW8bit / Lion8bit (the real
library, CPU backend), torch's clip_grad_norm_, and transformers' get_scheduler lr values.

Writes tests/fixtures/optim/optim_golden.safetensors (initial params, per-step grads and lrs, final params
and states per optimizer) and tests/fixtures/optim/schedules.json.
Run: python3 tools/make_optim_fixtures.py
"""
import json
import os

import torch
from safetensors.torch import save_file

import bitsandbytes as bnb
import transformers

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "optim")
STEPS = 6
# 6400 and 4100 elements get 8-bit states (>= 4096; 4100 ends in a partial block); 300 keeps f32 states.
SHAPES = {"w_big": (64, 100), "w_odd": (4100,), "b_small": (300,)}
LRS = [1e-3, 2e-3, 5e-4, 1e-3, 3e-3, 1e-3]


def run(make_opt, init, grads, tag, out, state_keys):
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = make_opt(list(params.values()))
    for s in range(STEPS):
        for k, p in params.items():
            p.grad = grads[k][s].clone()
        for g in opt.param_groups:
            g["lr"] = LRS[s]
        opt.step()
    for k, p in params.items():
        out[f"{tag}.{k}.param"] = p.detach().clone()
        st = opt.state[p]
        for key in state_keys:
            if key in st:
                out[f"{tag}.{k}.{key}"] = st[key].detach().clone().contiguous()


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    init = {k: torch.randn(s, generator=gen) * 0.1 for k, s in SHAPES.items()}
    grads = {k: torch.stack([torch.randn(s, generator=gen) * 0.01 for _ in range(STEPS)]) for k, s in SHAPES.items()}
    out = {}
    for k in SHAPES:
        out[f"init.{k}"] = init[k]
        out[f"grads.{k}"] = grads[k]
    out["lrs"] = torch.tensor(LRS, dtype=torch.float64)

    run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
        init, grads, "adamw", out, ["exp_avg", "exp_avg_sq"])
    run(lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
        init, grads, "adamw8bit", out, ["state1", "state2", "absmax1", "absmax2"])
    run(lambda ps: bnb.optim.Lion8bit(ps, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01),
        init, grads, "lion8bit", out, ["state1", "absmax1"])

    # clip_grad_norm_: total norm 2-norm, max_norm 0.05 (clips) and 100 (does not).
    for tag, max_norm in (("clip", 0.05), ("noclip", 100.0)):
        ps = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
        for k, p in ps.items():
            p.grad = grads[k][0].clone() * 3
        total = torch.nn.utils.clip_grad_norm_(list(ps.values()), max_norm)
        out[f"{tag}.total"] = total.reshape(1).float()
        for k, p in ps.items():
            out[f"{tag}.{k}.grad"] = p.grad.clone()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "optim_golden.safetensors"))

    # Schedules: lr for steps 0..total-1 (the lr each optimizer step uses), warmup from a ratio.
    sched = {"transformers": transformers.__version__, "bitsandbytes": bnb.__version__, "cases": []}
    for kind in ("constant", "constant_with_warmup", "linear", "cosine"):
        for total, ratio, base_lr in ((37, 0.1, 2e-4), (10, 0.0, 1e-3), (5, 0.5, 3e-5)):
            warmup = int(ratio) if ratio >= 1 else __import__("math").ceil(total * ratio)
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=base_lr)
            s = transformers.get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=total)
            lrs = []
            for _ in range(total + 2):
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                s.step()
            sched["cases"].append({"kind": kind, "total": total, "warmup_ratio": ratio, "warmup_steps": warmup,
                                   "base_lr": base_lr, "lrs": [repr(x) for x in lrs]})
    with open(os.path.join(OUT, "schedules.json"), "w") as f:
        json.dump(sched, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
