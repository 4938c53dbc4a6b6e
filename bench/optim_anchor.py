"""The anchors for the optimizer step benchmark (bench/optim_step.sh): one 256M-element f32 parameter with random
gradients, weight decay 0.01: torch AdamW (fused), bitsandbytes AdamW8bit and PagedAdamW8bit; mean ms of 20 steps
after 3 warm-ups, plus the device-to-device copy bandwidth (bytes read + written)."""
import time

import torch


def timed(step, iters=20):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.time() - t) / iters * 1e3


def main():
    n = 256 << 20
    a = torch.empty(n * 2, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a))
    print(f"copy bandwidth: {2 * a.numel() * 4 / ms / 1e6:.0f} GB/s")
    del a, b
    import bitsandbytes as bnb
    for name, make in [("torch AdamW fused", lambda p: torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, fused=True)),
                       ("bnb AdamW8bit", lambda p: bnb.optim.AdamW8bit([p], lr=1e-3, weight_decay=0.01)),
                       ("bnb PagedAdamW8bit", lambda p: bnb.optim.PagedAdamW8bit([p], lr=1e-3, weight_decay=0.01))]:
        p = torch.nn.Parameter(torch.zeros(n, device="cuda"))
        p.grad = torch.randn(n, device="cuda") * 1e-2
        opt = make(p)
        print(f"{name} 256M params: {timed(opt.step):.2f} ms/step", flush=True)
        del opt, p
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
