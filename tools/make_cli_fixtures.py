"""Expected outputs for the CLI tests, made with transformers on the bundled model (CPU, f32):
greedy generations and tokenizer ids for a few prompts.
    python3 tools/make_cli_fixtures.py   # writes tests/fixtures/cli/case*.{prompt,generate,ids}
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "qtune-tiny-8m")
PROMPTS = ["ROMEO:", "The history of the city", "First Citizen:\nBefore we proceed any further,"]


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    model.eval()
    cases = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=40)
        new = out[0, ids.shape[1]:].tolist()
        cases.append(dict(prompt=p, prompt_ids=ids[0].tolist(), new_ids=new,
                          text=p + tok.decode(new, skip_special_tokens=True)))
    # Plain files so the shell test needs no JSON parser: prompt, expected stdout of
    # `qtune generate --no-stream --quiet --temperature 0 --max-new-tokens 40`, and `qtune tokenize` output.
    d = os.path.join(ROOT, "tests", "fixtures", "cli")
    os.makedirs(d, exist_ok=True)
    for i, c in enumerate(cases):
        open(os.path.join(d, f"case{i}.prompt"), "w").write(c["prompt"])
        open(os.path.join(d, f"case{i}.generate"), "w").write(c["text"] + "\n")
        open(os.path.join(d, f"case{i}.ids"), "w").write(json.dumps(c["prompt_ids"], separators=(",", ":")) + "\n")
    print("wrote", len(cases), "cases to", d)


if __name__ == "__main__":
    main()
