"""bitsandbytes side of bench/quant_kernels.sh: the same measurements as bench/quant_kernels.cu, one JSON line
each (impl "bnb" / "torch"), CUDA-event medians. NF4 dequantize to bf16 and the batch-1 4-bit product
(Linear4bit's inference path, bnb.matmul_4bit) rotate over enough weight copies that the L2 cache never
holds them; LLM.int8 is Linear8bitLt(threshold=6.0) against torch's fp16 F.linear, and at one row of x
(decode) rotating over weight copies.
"""
import json
import statistics

import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

REPS, WARM = 30, 5
QUEUED_SPIN = 600000  # clocks, ~300 us


def median_ms(fn, reps=REPS, warm=WARM, spin=0):
    """spin > 0: each timed call is submitted while the GPU still runs a spin of that many clocks
    (torch.cuda._sleep; QUEUED_SPIN is ~300 us), so the time is the call's GPU time alone, without the host's
    dispatch (as in quant_kernels.cu)."""
    for i in range(warm):
        fn(i)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t = []
    for i in range(reps):
        if spin:
            torch.cuda._sleep(spin)
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        t.append(a.elapsed_time(b))
    return statistics.median(t)


def graph_ms(fn, count):
    """Per-call time of `count` calls captured in one CUDA graph and replayed."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(count):
            fn(i)
    return median_ms(lambda i: g.replay(), reps=10, warm=2) / count


def stream_ms(fn, count):
    """Per-call time of `count` calls submitted back to back (no graph) behind a spin long enough (~100 us
    per call) that all of them are queued before the first starts; median of 10 runs."""
    def run_all(_):
        for i in range(count):
            fn(i)

    return median_ms(run_all, reps=10, warm=1, spin=200000 * (count + 1)) / count


def emit_four(bench, fn, count, nbytes, copy_gbs, graph=True, **kw):
    """Times fn idle, queued, back to back on the stream and in a CUDA graph of `count` calls and emits the
    four with their fractions of the copy bandwidth (a graph that fails to capture is reported and gives
    nan; graph=False: not tried, nan, for calls that cannot be captured, whose failed capture would leave
    torch's state broken)."""
    ms, qms, sms = median_ms(fn), median_ms(fn, spin=QUEUED_SPIN), stream_ms(fn, count)
    gms = float("nan")
    try:
        if graph:
            gms = graph_ms(fn, count)
    except Exception as e:  # noqa: BLE001 - report and go on
        emit(impl="bnb", bench=bench + "_graph_error", error=str(e)[:200])
    emit(impl="bnb", bench=bench, **kw, us=ms * 1e3, us_queued=qms * 1e3, us_graph=gms * 1e3,
         us_stream=sms * 1e3, gbs=nbytes / ms / 1e6, frac_copy=nbytes / ms / 1e6 / copy_gbs,
         frac_copy_queued=nbytes / qms / 1e6 / copy_gbs, frac_copy_graph=nbytes / gms / 1e6 / copy_gbs,
         frac_copy_stream=nbytes / sms / 1e6 / copy_gbs)


def emit(**kw):
    print(json.dumps(kw), flush=True)


def copies_for(nbytes):
    return max(2, -(-256 * 2**20 // nbytes))


def main():
    torch.manual_seed(0)
    dev = "cuda"
    src = torch.empty(2**30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    ms = median_ms(lambda i: dst.copy_(src))
    copy_gbs = 2 * src.numel() / ms / 1e6
    emit(impl="torch", bench="copy", gbs=copy_gbs)
    del src, dst

    for O, I in [(4096, 4096), (14336, 4096)]:
        for dq in (False, True):
            n = O * I
            nb = n // 64
            absmax_bytes = nb + (nb // 256) * 4 if dq else nb * 4
            nbytes = n // 2 + absmax_bytes + 2 * n
            k = copies_for(nbytes)
            qs = [F.quantize_4bit(torch.randn(O, I, dtype=torch.bfloat16, device=dev) * 0.02, blocksize=64,
                                  compress_statistics=dq, quant_type="nf4") for _ in range(k)]
            outs = [torch.empty(O, I, dtype=torch.bfloat16, device=dev) for _ in range(k)]
            f = lambda i: F.dequantize_4bit(qs[i % k][0], qs[i % k][1], out=outs[i % k])
            emit_four("dequant_nf4_bf16", f, k, nbytes, copy_gbs, O=O, I=I, dq=dq)
            del qs, outs

    for O, I in [(4096, 4096), (14336, 4096), (4096, 14336)]:
        for dq in (False, True):
            n = O * I
            nb = n // 64
            nbytes = n // 2 + (nb + (nb // 256) * 4 if dq else nb * 4) + 2 * I + 2 * O
            k = copies_for(nbytes)
            qs = [F.quantize_4bit(torch.randn(O, I, dtype=torch.bfloat16, device=dev) * 0.02, blocksize=64,
                                  compress_statistics=dq, quant_type="nf4") for _ in range(k)]
            x = torch.randn(1, I, dtype=torch.bfloat16, device=dev)
            with torch.no_grad():
                f = lambda i: bnb.matmul_4bit(x, qs[i % k][0].t(), quant_state=qs[i % k][1])
                emit_four("gemv_nf4", f, k, nbytes, copy_gbs, O=O, I=I, dq=dq)
            del qs

    for O, K in [(4096, 4096), (14336, 4096), (4096, 14336)]:  # LLM.int8 at one row (decode)
        nbytes = O * K + 4 * O + 2 * K + 2 * O
        k = copies_for(nbytes)
        layers = []
        for _ in range(k):
            layer = bnb.nn.Linear8bitLt(K, O, bias=False, has_fp16_weights=False, threshold=6.0)
            layer.weight = bnb.nn.Int8Params(torch.randn(O, K, dtype=torch.float16) * 0.02, requires_grad=False,
                                             has_fp16_weights=False)
            layers.append(layer.to(dev).eval())
        x = torch.randn(1, K, dtype=torch.float16, device=dev)
        x[:, [11, 1000, 3000]] = 8.0  # outlier columns above the threshold
        with torch.no_grad():
            # Linear8bitLt at one row failed to capture (cudaErrorStreamCaptureInvalidated): no CUDA graph
            emit_four("int8_row", lambda i: layers[i % k](x), k, nbytes, copy_gbs, graph=False, O=O, I=K,
                      dq=False)
        del layers

    N, K = 2048, 4096
    for O in (14336, 4096):
        W = torch.randn(O, K, dtype=torch.float16) * 0.02
        x = torch.randn(N, K, dtype=torch.float16, device=dev)
        x[:, [11, 1000, 3000]] *= 8.0  # outlier columns above the threshold
        flops = 2 * N * K * O
        layer = bnb.nn.Linear8bitLt(K, O, bias=False, has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False)
        layer = layer.to(dev).eval()
        Wd = W.to(dev)
        with torch.no_grad():
            ms8 = median_ms(lambda i: layer(x))
            ms16 = median_ms(lambda i: torch.nn.functional.linear(x, Wd))
        emit(impl="bnb", bench="int8_linear", N=N, K=K, O=O, us=ms8 * 1e3, tflops=flops / ms8 / 1e9)
        emit(impl="torch", bench="fp16_linear", N=N, K=K, O=O, us=ms16 * 1e3, tflops=flops / ms16 / 1e9)
        emit(impl="bnb", bench="int8_vs_fp16", N=N, K=K, O=O, ratio=ms16 / ms8)
        del layer, Wd


if __name__ == "__main__":
    main()
