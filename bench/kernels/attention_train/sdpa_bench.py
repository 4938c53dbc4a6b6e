# PyTorch's flash-attention (SDPA, flash backend) on the shape the qtune training-attention test times
# (tests/ops/cuda/attention_train_test.cpp, CudaAttentionTrain.Timing8B): B 1, T 2048, Hq 32, Hkv 8,
# D 128, bf16, causal. Prints forward and backward ms and TFLOP/s with the same FLOP counts
# (forward 2·2·T²·Hq·D/2, backward 2.5× that). GQA through enable_gqa when the flash backend takes it,
# else k and v repeated to 32 heads (the repeat is outside the timed region).
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, T, HQ, HKV, D = 1, 2048, 32, 8, 128
torch.manual_seed(0)
dev = "cuda"
q = torch.randn(B, HQ, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(B, HKV, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(B, HKV, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
g = torch.randn(B, HQ, T, D, device=dev, dtype=torch.bfloat16)


def timed(fn, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(iters):
        fn()
    t1.record()
    torch.cuda.synchronize()
    return t0.elapsed_time(t1) / iters


with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
    try:
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        kk, vv, how = k, v, "enable_gqa"
        kw = {"enable_gqa": True}
    except RuntimeError:
        kk = k.detach().repeat_interleave(HQ // HKV, dim=1).requires_grad_()
        vv = v.detach().repeat_interleave(HQ // HKV, dim=1).requires_grad_()
        how, kw = "k/v repeated to 32 heads", {}
    fwd = timed(lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **kw))
    out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **kw)
    bwd = timed(lambda: torch.autograd.grad(out, (q, kk, vv), g, retain_graph=True))

flops = 2 * 2 * T * T * HQ * D / 2 * B
print(f"torch {torch.__version__} SDPA flash ({how}) B{B} T{T} Hq{HQ} Hkv{HKV} D{D} bf16 causal: "
      f"forward {fwd:.3f} ms ({flops / fwd / 1e9:.1f} TFLOP/s), backward {bwd:.3f} ms "
      f"({2.5 * flops / bwd / 1e9:.1f} TFLOP/s), fwd+bwd {fwd + bwd:.3f} ms")
