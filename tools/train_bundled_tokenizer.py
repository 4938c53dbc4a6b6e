#!/usr/bin/env python3
"""Data split, tokenizer and token ids for the bundled model (models/qtune-tiny-8m).

Why: qtune ships one small, really trained Llama so that the demo, perplexity checks and SFT examples run
offline. This script is step 1 of 2 (step 2 is tools/train_bundled_model.py):

  1. reads the public text in ../shared/data/text (tiny_shakespeare.txt, wiki_demo.txt, c4_demo.jsonl,
     tinystories_sample.txt) and splits each source into train / held-out (about 5% held out, rule below);
  2. trains a byte-level BPE tokenizer (Llama-3-style split regex, 4096 ids incl. 5 special tokens) on the
     train split only, and saves it with transformers' PreTrainedTokenizerFast.save_pretrained;
  3. writes the held-out text to models/<name>/heldout.txt and the tokenized train / val streams
     (uint16 .npy) to a git-ignored folder (.carry/bundled) that travels to the training machine.

Held-out rule (deterministic, per source):
  - tiny_shakespeare.txt: from the first blank line ("\n\n") at or after 95% of its characters to the end;
  - wiki_demo.txt:        from just after the first ". " at or after 95% of its characters to the end;
  - c4_demo.jsonl:        the last 15 of its 300 documents;
  - tinystories_sample.txt: the last of its 5 stories (stories are separated by "<|endoftext|>").
heldout.txt = the four held-out parts in that order, joined by "\n\n" (each part stripped).

Documents: Shakespeare is cut into documents of consecutive speeches (at blank lines) of at least 1500
characters, wiki documents are its lines, c4 its json rows, TinyStories its stories. Each document becomes
[BOS] tokens [EOS] in the token stream, so the model learns to start at BOS and to stop at EOS.

Usage: python3 tools/train_bundled_tokenizer.py [--data ../shared/data/text] [--out models/qtune-tiny-8m]
                                                 [--carry .carry/bundled] [--vocab 4096]
"""
import argparse
import json
import os

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
SPECIALS = [BOS, EOS, "<|pad|>", "<|im_start|>", "<|im_end|>"]  # ids 0..4
# The Llama 3 split regex (a format fact of Meta's tokenizer.json).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# ChatML: <|im_start|>role\ncontent<|im_end|>\n ... ; BOS first because apply_chat_template tokenizes
# without the post-processor's special tokens.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                 "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def split_sources(data_dir):
    """Returns {source: (train_docs, heldout_text)} following the rule in the module comment."""
    out = {}
    text = open(os.path.join(data_dir, "tiny_shakespeare.txt"), encoding="utf-8").read()
    cut = text.index("\n\n", int(0.95 * len(text)))
    train, held = text[:cut], text[cut:].strip()
    docs, cur = [], ""
    for speech in train.split("\n\n"):
        cur = speech if not cur else cur + "\n\n" + speech
        if len(cur) >= 1500:
            docs.append(cur)
            cur = ""
    if cur:
        docs.append(cur)
    out["tiny_shakespeare"] = (docs, held)

    text = open(os.path.join(data_dir, "wiki_demo.txt"), encoding="utf-8").read()
    cut = text.index(". ", int(0.95 * len(text))) + 2
    train, held = text[:cut], text[cut:].strip()
    out["wiki_demo"] = ([d for d in train.split("\n") if d.strip()], held)

    rows = [json.loads(l)["text"] for l in open(os.path.join(data_dir, "c4_demo.jsonl"), encoding="utf-8")]
    out["c4_demo"] = (rows[:-15], "\n\n".join(r.strip() for r in rows[-15:]))

    text = open(os.path.join(data_dir, "tinystories_sample.txt"), encoding="utf-8").read()
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    out["tinystories_sample"] = (stories[:-1], stories[-1])
    return out


def build_tokenizer(train_docs, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train_docs, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1",
                                                       special_tokens=[(BOS, bos_id)])
    return tok


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(root, "..", "shared", "data", "text"))
    ap.add_argument("--out", default=os.path.join(root, "models", "qtune-tiny-8m"))
    ap.add_argument("--carry", default=os.path.join(root, ".carry", "bundled"))
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()

    from transformers import PreTrainedTokenizerFast

    parts = split_sources(args.data)
    train_docs = [d for docs, _ in parts.values() for d in docs]
    tok = build_tokenizer(train_docs, args.vocab)
    assert tok.get_vocab_size() == args.vocab, tok.get_vocab_size()
    os.makedirs(args.out, exist_ok=True)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token="<|pad|>",
                                 additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                 model_max_length=512, clean_up_tokenization_spaces=False)
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(args.out, save_jinja_files=False)

    held = "\n\n".join(h for _, h in parts.values()) + "\n"
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held)

    # Token streams: [BOS] doc [EOS] per document.
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    os.makedirs(args.carry, exist_ok=True)
    stats = {}
    train_ids, val_ids = [], []
    for name, (docs, h) in parts.items():
        n_train = 0
        for enc in tok.encode_batch(docs, add_special_tokens=False):
            train_ids += [bos] + enc.ids + [eos]
            n_train += len(enc.ids) + 2
        hv = tok.encode(h, add_special_tokens=False).ids
        val_ids += [bos] + hv + [eos]
        stats[name] = {"train_docs": len(docs), "train_chars": sum(len(d) for d in docs), "train_tokens": n_train,
                       "heldout_chars": len(h), "heldout_tokens": len(hv) + 2}
    np.save(os.path.join(args.carry, "train.npy"), np.array(train_ids, dtype=np.uint16))
    np.save(os.path.join(args.carry, "val.npy"), np.array(val_ids, dtype=np.uint16))
    stats["total"] = {"train_tokens": len(train_ids), "val_tokens": len(val_ids)}
    with open(os.path.join(args.carry, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
