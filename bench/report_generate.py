"""Combine the JSON lines of hf_generate.py and `qtune bench` into the RESULTS.md table rows.
    python3 bench/report_generate.py hf.json qtune.json
"""
import json
import sys

hf = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
qt = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
bw = hf["copy_bandwidth_bytes_per_s"]
bytes_tok = hf["decode_bytes_per_token"]  # every weight except the embedding table is read once per token
print(f"copy bandwidth (read+write): {bw / 1e12:.2f} TB/s; weight bytes read per decoded token: {bytes_tok / 1e9:.2f} GB")
print("| impl | prefill tok/s | decode tok/s | decode ms/token | decode bandwidth (fraction of copy) | peak GPU GiB |")
print("|---|---|---|---|---|---|")
for r in (hf, qt):
    frac = bytes_tok / (r["decode_ms_per_token"] / 1e3) / bw
    print(f"| {r['impl']} | {r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | "
          f"{r['decode_ms_per_token']:.2f} | {frac * 100:.0f}% | {r.get('peak_gpu_bytes', 0) / 2**30:.1f} |")
print(f"ratio qtune/transformers: prefill {qt['prefill_tokens_per_s'] / hf['prefill_tokens_per_s']:.2f}x, "
      f"decode {qt['decode_tokens_per_s'] / hf['decode_tokens_per_s']:.2f}x")
