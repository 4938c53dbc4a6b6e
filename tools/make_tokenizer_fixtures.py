#!/usr/bin/env python3
"""Builds the tokenizer parity fixtures under tests/fixtures/tokenizer/ with the real HF `tokenizers` /
`transformers` (and `sentencepiece` for the sentencepiece-semantics reference).

Writes:
  strings.json                 the test strings (>= 2,000: hand-written edge cases, seeded random mixtures,
                               slices of the text files in /work/shared/data, a few long ones)
  <name>/...                   the tokenizer files each case loads (tokenizer.json, tokenizer.model,
                               tokenizer_config.json)
  expected_<name>.json         {"dir", "patch", "cases": [[ids_with_special, ids_without, decoded, decoded_skip]]}
                               decoded = decode(ids_with_special), decoded_skip = decode(..., skip_special_tokens)
                               (null when equal to the input string, to keep the files small; decoded is only
                               kept for the first FULL_DECODE strings). ids_with_special is {"prefix", "suffix"}
                               around ids_without when it has that shape. "patch" is a set of
                               top-level tokenizer.json keys the C++ test substitutes into dir/tokenizer.json
                               before loading (variants that share a large vocabulary).
  decode_llama2.json           [ids, decode, decode(skip_special_tokens), sentencepiece decode] for random
                               Llama 2 id sequences (invalid byte runs, unk/control ids)
  decode_gpt2.json             [ids, decode, decode(skip_special_tokens)] for random GPT-2 id sequences
  nfc.json                     [input, unicodedata.normalize("NFC", input)] pairs for the NFC normalizer
  ggml/                        llama.cpp's tokenizer test vectors (llama-spm, gpt-2), copied as they are.

Run: python3 tools/make_tokenizer_fixtures.py [--data /work/shared/data]
"""
import argparse
import json
import os
import random
import shutil
import sys
import tempfile

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import generate_merges

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")


# ----------------------------------------------------------------------------------------------- strings
HAND = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t\t\tx", "Hello world", " Hello world",
    "Hello world ", "Hello  world", "hello", "HELLO", "Hello, World!", "I'm", "I'M", "don't", "DON'T", "we'll",
    "We'LL", "they're", "you've", "she'd", "it's", "It'S", "'s", "'", "''", "a'b", "rock 'n' roll",
    "1", "12", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "-42", "1e-10", "0x1F",
    "ied 4 ½ months", "Führer", "naïve café", "résumé", "Ångström", "e\u0301", "n\u0303o", "\u00e9\u0301",
    "Äpfel über Öl", "ß", "İstanbul", "ΑΒΓ αβγ", "Здравствуй, мир!", "你好，世界", "こんにちは世界",
    "안녕하세요 세계", "한국어", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "ሰላም",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏿‍💻", "❤️", "🇺🇸🇫🇷", "a😀b", " 😀 ", "🦙🦙 llama",
    "def foo(x):\n    return x + 1\n", "int main() { return 0; }", "for (int i = 0; i < n; ++i) {\n\ti++;\n}",
    "<html><body>Hi</body></html>", "SELECT * FROM t WHERE a = 'b';", "x = [1, 2, 3]  # comment",
    "    indented", "\t\ttabs\tand\ttabs", "a\u00a0b", "a\u2009b", "a\u3000b", "a\u200bb", "a\u2028b", "a\u0085b",
    "a\u000bb", "a\u000cb", "a\u180eb \u180e1 x \u180e", "a\u200cb\u200d", "\u00a0\u00a0", "\u3000", "trailing   ", "   leading", "mid   dle",
    " " * 10, " " * 100, "\n" * 20, "\t" * 17, " \t \n \r " * 5, "a" * 50, "ab" * 40, "=" * 64, "-" * 33,
    "<0x41>", "<0x0A>", "<0xFF>", "<0x41><0x42>", "<0x4>", "<0xZZ>", "▁", "▁▁", "▁hello", "hello▁world",
    "<s>", "</s>", "<unk>", "<s>hello</s>", "<s> hello </s>", "a<s>b", "<s><s>", "text </s> more",
    "<|endoftext|>", "hi<|endoftext|>there", "<|endoftext|><|endoftext|>", " <|endoftext|> ",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>", "<|begin_of_text|>Hi",
    "<|eot_id|>", "x <mask> y", "x<mask>y", "  <mask>  ", "[NEW] word", "a[NEW]b", "the [NEW]", "rs_tok   after",
    "<tool_call>{}</tool_call>", "hello world<|eot_id|>", "Hello World hello world", "a<pad>b", "x <extra> y",
    "<pad><extra>", "<pad> <extra>",
    "\u0000", "\u0001\u0002", "\u007f", "\ufeffBOM", "\ufffd", "\U0010ffff", "\U0001d11e", "\u2581",
    "café\u0301", "ﬁ ligature", "Ａ full width", "①②③", "x²+y²", "½ ¼ ¾", "™ © ®", "…", "“quotes”", "‘single’",
    "—dash–", "«guillemets»", "¿Qué?", "¡Hola!", "Ελληνικά", "Ünïcödé", "ǅ", "ꙮ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "tHe QuIcK",
    "Mr. Smith's car isn't here; it's Jane's.", "e.g., i.e., etc.", "U.S.A.", "$100.00", "50%", "#hashtag",
    "@user", "email@example.com", "https://example.com/path?q=1&r=2#frag", "C:\\Users\\test", "/usr/bin/env",
    "a\nb\nc", "line1\r\nline2\r\n", "\n\n\nparagraph\n\n\n", "word\n\n", "  \n  \n", "x\t\ny",
]


def random_strings(rng, n):
    pools = [
        "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " ", "  ", "\t", "\n", "\r\n",
        ".,;:!?'\"()[]{}<>-_=+*/\\|&^%$#@~`", "'s 't 're 've 'm 'll 'd 'S 'T 'RE".split()[0:1][0],
        "éèêëàâäôöûüçñÉÀÖÜß", "你好世界中文字符汉字", "日本語のテキストカタカナ", "한국어텍스트", "абвгдеёжзийклмн",
        "αβγδεζηθ", "العربية", "עברית", "हिन्दी", "ไทย", "😀😃😄😁🤣🥲", "👨‍👩‍👧", "🏳️‍🌈", "\u0301\u0308",
        "\u00a0\u2009\u3000\u200b", "<0x41>", "▁", "½²³", "ﬁﬂ", "ＡＢＣ１２３",
    ]
    words = ["the", "The", "hello", "world", "don't", "I'm", "it's", "1234", "3.5", "foo_bar", "camelCase",
             "x+=1", "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<mask>", "[NEW]", "  ", "\n\n"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.4:
                parts.append(rng.choice(words))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
            if rng.random() < 0.5:
                parts.append(rng.choice([" ", "", "  ", "\n", "\t"]))
        out.append("".join(parts))
    return out


def text_slices(rng, text, n, lo=5, hi=400):
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        s = rng.randint(0, max(0, len(text) - k))
        out.append(text[s:s + k])
    return out


def build_strings(data):
    rng = random.Random(1234)
    strings = list(HAND)
    for name in ["llama-spm", "gpt-2"]:
        with open(os.path.join(data, "tokenizers", "tests", name + ".inp"), encoding="utf-8") as f:
            strings += f.read().split("\n__ggml_vocab_test__\n")
    strings += random_strings(rng, 700)
    t = os.path.join(data, "text")
    shakespeare = open(os.path.join(t, "tiny_shakespeare.txt"), encoding="utf-8").read()
    wiki = open(os.path.join(t, "wiki_demo.txt"), encoding="utf-8").read()
    stories = open(os.path.join(t, "tinystories_sample.txt"), encoding="utf-8").read()
    c4 = [json.loads(l)["text"] for l in open(os.path.join(t, "c4_demo.jsonl"), encoding="utf-8")]
    oa = [json.loads(l)["input"] for l in open(os.path.join(data, "sft", "oa_questions.jsonl"), encoding="utf-8")]
    alpaca = json.load(open(os.path.join(data, "sft", "alpaca_en_demo.json"), encoding="utf-8"))
    strings += text_slices(rng, shakespeare, 300, 5, 120)
    strings += text_slices(rng, wiki, 300, 5, 120)
    strings += text_slices(rng, stories, 40, 5, 120)
    strings += [text_slices(rng, rng.choice(c4), 1, 5, 120)[0] for _ in range(300)]
    strings += [text_slices(rng, rng.choice(oa), 1, 5, 120)[0] for _ in range(300)]
    strings += [rng.choice(alpaca)["output"][:120] for _ in range(150)]
    # Long inputs: speed (no quadratic behaviour) as well as parity.
    strings += [" " * 3000 + "end", "x" + "\n" * 1000 + "y", wiki[:3000], "\t \u3000" * 200, "a" * 3000,
                "😀" * 100, ("word " * 300).strip()]
    return strings


# ----------------------------------------------------------------------------------------------- tokenizers
FULL_DECODE = 500


def hf_cases(tok, strings):
    """decoded (with special tokens) is kept for the first FULL_DECODE strings only: elsewhere it is nearly always
    the special tokens' text around decoded_skip, which would double the file for little coverage."""
    cases = []
    for i, s in enumerate(strings):
        ids_sp = tok(s, add_special_tokens=True)["input_ids"]
        ids = tok(s, add_special_tokens=False)["input_ids"]
        dec = tok.decode(ids_sp, skip_special_tokens=False)
        dec_skip = tok.decode(ids_sp, skip_special_tokens=True)
        if i >= FULL_DECODE:
            dec = s
        cases.append([pack_special(ids_sp, ids), ids, None if dec == s else dec,
                      None if dec_skip == s else dec_skip])
    return cases


def pack_special(ids_sp, ids):
    """ids_with_special as [prefix, suffix] around ids when it has that shape (it nearly always has)."""
    for k in range(len(ids_sp) - len(ids) + 1):
        if ids_sp[k:k + len(ids)] == ids:
            return {"prefix": ids_sp[:k], "suffix": ids_sp[k + len(ids):]}
    return ids_sp


VARIANT_STRINGS = 600  # variants of a tokenizer are checked on the edge cases (the strings before the text slices)


def tokenizers_cases(path, strings, patch=None):
    """The tokenizers library alone on a tokenizer.json (no transformers class rebuilding the pipeline), with
    `patch`'s top-level keys substituted when given."""
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    j.update(patch or {})
    tk = Tokenizer.from_str(json.dumps(j))
    cases = []
    for i, s in enumerate(strings):
        ids_sp = tk.encode(s, add_special_tokens=True).ids
        ids = tk.encode(s, add_special_tokens=False).ids
        dec = tk.decode(ids_sp, skip_special_tokens=False) if i < FULL_DECODE else s
        dec_skip = tk.decode(ids_sp, skip_special_tokens=True)
        cases.append([pack_special(ids_sp, ids), ids, None if dec == s else dec,
                      None if dec_skip == s else dec_skip])
    return cases


def write_expected(name, dirname, cases, patch=None, reference="transformers"):
    """reference "tokenizers" means the C++ test loads tokenizer.json alone (no tokenizer_config.json)."""
    with open(os.path.join(OUT, "expected_" + name + ".json"), "w", encoding="utf-8") as f:
        json.dump({"dir": dirname, "patch": patch, "reference": reference, "cases": cases}, f,
                  ensure_ascii=False, separators=(",", ":"))


def string_merges(j):
    """Merges as "a b" strings (the older, smaller form HF also reads) when no merged token holds a space."""
    m = j.get("model") or {}
    merges = m.get("merges")
    if merges and isinstance(merges[0], list) and not any(" " in a or " " in b for a, b in merges):
        m["merges"] = [a + " " + b for a, b in merges]


def compact_json(path):
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    string_merges(j)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, separators=(",", ":"))


def check(tok, text, want, what):
    got = tok(text, add_special_tokens=False)["input_ids"]
    if got != want:
        sys.exit(f"{what}: {text!r} -> {got}, expected {want}: the converted tokenizer is wrong")


def save_fast(tok, d):
    os.makedirs(d, exist_ok=True)
    tok.save_pretrained(d)
    for extra in ["special_tokens_map.json", "chat_template.jinja"]:
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    compact_json(os.path.join(d, "tokenizer.json"))


def make_gpt2(data):
    src = os.path.join(data, "tokenizers", "gpt2")
    bpe = models.BPE.from_file(os.path.join(src, "vocab.json"), os.path.join(src, "merges.txt"))
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    check(tok, "Hello world", [15496, 995], "gpt2")
    d = os.path.join(OUT, "gpt2")
    save_fast(tok, d)
    return AutoTokenizer.from_pretrained(d)


def variant(base_dir, name, patch, config):
    """Writes base_dir/tokenizer.json with `patch` applied into a temp folder and loads it with transformers."""
    tmp = tempfile.mkdtemp()
    with open(os.path.join(base_dir, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    j.update(patch)
    with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return AutoTokenizer.from_pretrained(tmp)


QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def qwen2_patch():
    def added(i, c, special=True, **kw):
        t = {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": special}
        t.update(kw)
        return t
    return {
        "added_tokens": [added(50256, "<|endoftext|>"), added(50257, "<|im_start|>"), added(50258, "<|im_end|>"),
                         added(50259, "<tool_call>", special=False), added(50260, "</tool_call>", special=False)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    }


QWEN2_CONFIG = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False,
                "clean_up_tokenization_spaces": False}


def roberta_patch():
    # GPT-2 vocabulary with add_prefix_space and a RoBERTa-style post-processor (BOS/EOS around the text).
    return {
        "added_tokens": [{"id": 50256, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True},
                         {"id": 50257, "content": "<mask>", "single_word": False, "lstrip": True,
                          "rstrip": False, "normalized": False, "special": True}],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 50256],
                           "cls": ["<|endoftext|>", 50256], "trim_offsets": True, "add_prefix_space": True},
    }


ROBERTA_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                  "eos_token": "<|endoftext|>", "mask_token": "<mask>", "clean_up_tokenization_spaces": False}


def make_llama3_style(data):
    """torchtune's 2,000-token Llama-3-style tokenizer.json plus Llama 3's BOS template and added tokens that
    exercise lstrip / rstrip / single_word / normalized / non-special."""
    with open(os.path.join(data, "tokenizers", "tiny", "llama3_style_tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)

    def added(i, c, special=True, **kw):
        t = {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": special}
        t.update(kw)
        return t
    j["added_tokens"] = [added(2000, "<|begin_of_text|>"), added(2001, "<|end_of_text|>"),
                         added(2002, "<|eot_id|>"), added(2003, "<mask>", lstrip=True),
                         added(2004, "[NEW]", special=False, single_word=True),
                         added(2005, "rs_tok", special=False, rstrip=True),
                         added(2006, "hello world", special=False, normalized=True)]
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [2000],
                                                                    "tokens": ["<|begin_of_text|>"]}}}
    d = os.path.join(OUT, "llama3_style")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                   "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": False,
                   "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}, f, indent=1)
    return AutoTokenizer.from_pretrained(d)


def llama3_variant_patches(data):
    """Pre-tokenizer and merge-format variants of the llama3_style tokenizer, checked against the tokenizers
    library: every Split behavior, invert, a String pattern, Digits, WhitespaceSplit, add_prefix_space, and
    merges written as "a b" strings."""
    with open(os.path.join(OUT, "llama3_style", "tokenizer.json"), encoding="utf-8") as f:
        model = json.load(f)["model"]
    model = dict(model, merges=[a + " " + b for a, b in model["merges"]])
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}

    def split(pattern, behavior, invert=False, kind="Regex"):
        return {"type": "Split", "pattern": {kind: pattern}, "behavior": behavior, "invert": invert}
    return {
        "split_behaviors": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split("\\s+", "MergedWithPrevious"), split("e", "MergedWithNext", kind="String"),
            split("\\p{P}+", "Contiguous"), {"type": "Digits", "individual_digits": True}, bl]}},
        "split_removed_invert": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split("[\\p{L}\\p{N}]+", "Removed", invert=True), {"type": "Digits", "individual_digits": False},
            dict(bl, add_prefix_space=True)]}},
        "whitespace_split": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"}, split("o", "Isolated", invert=True, kind="String"), bl]}},
        "string_merges": {"model": model},
        # a normalizer that changes the normalized added token "hello world" itself (HF matches its normal form)
        "normalized_added": {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"String": "o"}, "content": "0"}, {"type": "NFC"}]}},
        # Llama 3's own post-processor shape: Sequence[ByteLevel, TemplateProcessing]
        "sequence_post_processor": {"post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "<|end_of_text|>", "type_id": 0}}],
             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [2000],
                                                      "tokens": ["<|begin_of_text|>"]},
                                "<|end_of_text|>": {"id": "<|end_of_text|>", "ids": [2001],
                                                    "tokens": ["<|end_of_text|>"]}}}]}},
    }


def metaspace_patches():
    """Metaspace variants over the Llama 2 vocabulary (Mistral / newer SentencePiece conversions)."""
    def ms(scheme, split):
        return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}
    return {"always_split": {"normalizer": None, "pre_tokenizer": ms("always", True), "decoder": ms("always", True)},
            "never": {"normalizer": None, "pre_tokenizer": ms("never", False), "decoder": ms("never", False)}}


def make_subword_bpe(data, strings):
    """A small BPE trained here with continuing_subword_prefix "##", end_of_word_suffix "</w>" and an unknown
    token (characters outside the training text become [UNK]), WhitespaceSplit, the BPEDecoder. (Training breaks
    ties differently from run to run, so each run rewrites this tokenizer and its expected ids together.)"""
    from tokenizers import trainers
    text = open(os.path.join(data, "text", "tinystories_sample.txt"), encoding="utf-8").read()
    tk = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.BPEDecoder(suffix="</w>")
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"],
                                                       continuing_subword_prefix="##", end_of_word_suffix="</w>",
                                                       show_progress=False))
    d = os.path.join(OUT, "subword_bpe")
    os.makedirs(d, exist_ok=True)
    tk.save(os.path.join(d, "tokenizer.json"))
    compact_json(os.path.join(d, "tokenizer.json"))
    return os.path.join(d, "tokenizer.json")


def make_llama2(data):
    """Llama 2: tokenizer.model as is (what the tokenizer.model-only load sees), the tokenizer.json that
    transformers converts it to (Metaspace, merges in piece-id order), and the legacy tokenizer.json that the
    meta-llama Hub repositories ship (Prepend/Replace normalizer, merges ordered by piece score)."""
    model = os.path.join(data, "tokenizers", "llama2", "tokenizer.model")
    cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
           "eos_token": "</s>", "unk_token": "<unk>", "clean_up_tokenization_spaces": False, "legacy": False}
    # (a) tokenizer.model only
    dm = os.path.join(OUT, "llama2_model")
    os.makedirs(dm, exist_ok=True)
    shutil.copy(model, os.path.join(dm, "tokenizer.model"))
    with open(os.path.join(dm, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    tok_model = AutoTokenizer.from_pretrained(dm)
    check(tok_model, "Hello world", [15043, 3186], "llama2 (tokenizer.model)")
    # (b) transformers' conversion
    dj = os.path.join(OUT, "llama2_json")
    save_fast(tok_model, dj)
    with open(os.path.join(dj, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    tok_json = AutoTokenizer.from_pretrained(dj)
    # (c) legacy Hub format
    with open(os.path.join(dj, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(open(model, "rb").read())
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    scores = {p.piece: p.score for p in m.pieces}
    merges = generate_merges(vocab, scores)
    j["model"]["merges"] = [[a, b] for a, b in merges]
    string_merges(j)
    j["model"]["unk_token"] = "<unk>"
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "\u2581"}]}
    j["pre_tokenizer"] = None
    dl = os.path.join(OUT, "llama2_legacy")
    os.makedirs(dl, exist_ok=True)
    with open(os.path.join(dl, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(dl, "tokenizer_config.json"), "w") as f:
        json.dump(dict(cfg, legacy=True), f, indent=1)
    tok_legacy = AutoTokenizer.from_pretrained(dl)
    check(tok_legacy, "Hello world", [15043, 3186], "llama2 (legacy)")
    return tok_model, tok_json, tok_legacy


LLAMA2_ADDED_CONFIG = {
    "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "pad_token": "<pad>", "added_tokens_decoder": {
        "32000": {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                  "special": True},
        "32001": {"content": "<extra>", "lstrip": True, "normalized": False, "rstrip": False, "single_word": False,
                  "special": False}}}


def model_variant(model_path, config):
    """A folder with tokenizer.model and the given tokenizer_config.json, loaded with transformers."""
    tmp = tempfile.mkdtemp()
    shutil.copy(model_path, os.path.join(tmp, "tokenizer.model"))
    with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return AutoTokenizer.from_pretrained(tmp)


def make_sp2k(data):
    d = os.path.join(OUT, "sp2k_model")
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(data, "tokenizers", "tiny", "sentencepiece_2k.model"), os.path.join(d, "tokenizer.model"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": True,
                   "clean_up_tokenization_spaces": False}, f, indent=1)
    return AutoTokenizer.from_pretrained(d)


def make_sp2k_unigram(data):
    """The 2k Unigram model as the tokenizers library converts it (Precompiled nmt_nfkc charsmap normalizer,
    Metaspace pre-tokenizer and decoder, Unigram model): the reference is the tokenizers library itself."""
    import sentencepiece.sentencepiece_model_pb2 as pbm
    sys.modules.setdefault("sentencepiece_model_pb2", pbm)  # from_spm imports it under this name
    from tokenizers import SentencePieceUnigramTokenizer
    t = SentencePieceUnigramTokenizer.from_spm(os.path.join(data, "tokenizers", "tiny", "sentencepiece_2k.model"))
    d = os.path.join(OUT, "sp2k_unigram")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tokenizer.json")
    t.save(path)
    compact_json(path)
    return path


def spm_cases(path, strings, add_bos=True, add_eos=False):
    """The sentencepiece library's own encoding, for the sentencepiece-semantics mode. decoded_skip is
    sp.decode(ids with BOS/EOS) (sentencepiece never shows control pieces); decoded is not kept (null)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=path)
    cases = []
    for s in strings:
        ids = sp.encode(s)
        ids_sp = ([sp.bos_id()] if add_bos else []) + ids + ([sp.eos_id()] if add_eos else [])
        dec = sp.decode(ids_sp)
        cases.append([pack_special(ids_sp, ids), ids, None, None if dec == s else dec])
    return cases


def llama2_decode_cases(tok, rng, n):
    """Random id sequences that text never encodes to (runs of <0xXX> byte pieces forming invalid UTF-8,
    unk/control ids mixed in, leading "▁" pieces), decoded by transformers and by sentencepiece."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, "llama2_model", "tokenizer.model"))
    pool = [0, 1, 2, 29871, 259, 15043, 3186, 13, 29889, 30010] + list(range(3, 259))
    cases = []
    for _ in range(n):
        ids = [rng.choice(pool) if rng.random() < 0.3 else rng.randint(3, 258) for _ in range(rng.randint(1, 10))]
        cases.append([ids, tok.decode(ids), tok.decode(ids, skip_special_tokens=True), sp.decode(ids)])
    return cases


def random_decode_cases(tok, rng, n, vocab, special):
    """Random id sequences (single-byte tokens that form invalid UTF-8, special ids, arbitrary ids) decoded by
    transformers, with and without skip_special_tokens."""
    cases = []
    for _ in range(n):
        ids = [rng.choice([rng.randint(0, 255), rng.randint(0, vocab - 1), rng.choice(special)])
               for _ in range(rng.randint(1, 10))]
        cases.append([ids, tok.decode(ids), tok.decode(ids, skip_special_tokens=True)])
    return cases


def nfc_cases(rng, n):
    """Random strings rich in what NFC reorders and composes: base letters, combining marks of several classes,
    precomposed letters, Hangul jamo and syllables, singletons and composition exclusions."""
    import unicodedata
    pools = ["aeiouAEIOUnNcCsSzZ", "\u0300\u0301\u0302\u0303\u0308\u030a\u030c\u0323\u0327\u0328\u0331\u0345",
             "\u05b0\u05b4\u05bc\u0651\u064e\u093c\u094d\u0e38\u0e48\u302a\u3099",
             "éÅñçǅǖṩẫ", "\u1100\u1161\u11a8\u1112\u1175\u11bc\uac00\ud7a3", "\u212b\u2126\u0958\u0344\u0f73",
             "カ\u3099ハ\u309a", " x1"]
    out = []
    for _ in range(n):
        t = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12)))
        out.append([t, unicodedata.normalize("NFC", t)])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    strings = build_strings(args.data)
    with open(os.path.join(OUT, "strings.json"), "w", encoding="utf-8") as f:
        json.dump(strings, f, ensure_ascii=False, indent=0)
    print(len(strings), "strings")

    gpt2 = make_gpt2(args.data)
    write_expected("gpt2", "gpt2", hf_cases(gpt2, strings))
    gdir = os.path.join(OUT, "gpt2")
    with open(os.path.join(OUT, "decode_gpt2.json"), "w", encoding="utf-8") as f:
        json.dump(random_decode_cases(gpt2, random.Random(13), 300, 50257, [50256]), f, ensure_ascii=False)
    write_expected("qwen2_style", "gpt2", hf_cases(variant(gdir, "qwen2", qwen2_patch(), QWEN2_CONFIG), strings),
                   patch={"patch": qwen2_patch(), "config": QWEN2_CONFIG})
    write_expected("roberta_style", "gpt2",
                   hf_cases(variant(gdir, "roberta", roberta_patch(), ROBERTA_CONFIG), strings[:VARIANT_STRINGS]),
                   patch={"patch": roberta_patch(), "config": ROBERTA_CONFIG})
    # tokenizer classes that rebuild the pipeline over the plain GPT-2 tokenizer.json (transformers reference)
    for name, cls_cfg in {"class_gpt2_prefix_space": {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": True},
                          "class_qwen2": {"tokenizer_class": "Qwen2Tokenizer"},
                          "class_llama_byte_level": {"tokenizer_class": "LlamaTokenizerFast"}}.items():
        cfg = dict(cls_cfg, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                   clean_up_tokenization_spaces=False)
        write_expected("gpt2_" + name, "gpt2", hf_cases(variant(gdir, name, {}, cfg), strings[:VARIANT_STRINGS]),
                       patch={"patch": {}, "config": cfg})
    write_expected("llama3_style", "llama3_style", hf_cases(make_llama3_style(args.data), strings))
    edge = strings[:VARIANT_STRINGS]
    cleanup = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True}
    for name, patch in llama3_variant_patches(args.data).items():
        write_expected("llama3_" + name, "llama3_style",
                       tokenizers_cases(os.path.join(OUT, "llama3_style", "tokenizer.json"), edge, patch),
                       patch={"patch": patch, "config": None}, reference="tokenizers")
    # clean_up_tokenization_spaces: transformers applies it to Unigram models and ignores it for BPE ones.
    write_expected("llama3_cleanup", "llama3_style",
                   hf_cases(variant(os.path.join(OUT, "llama3_style"), "cleanup", {}, cleanup), edge),
                   patch={"patch": {}, "config": cleanup})
    write_expected("subword_bpe", "subword_bpe", tokenizers_cases(make_subword_bpe(args.data, strings), edge),
                   reference="tokenizers")
    tok_model, tok_json, tok_legacy = make_llama2(args.data)
    cases = hf_cases(tok_model, strings)
    if cases != hf_cases(tok_json, strings):
        sys.exit("llama2: transformers gives different results for tokenizer.model and its own tokenizer.json")
    write_expected("llama2", "llama2_model", cases)  # the C++ test checks llama2_json against it as well
    write_expected("llama2_legacy", "llama2_legacy", hf_cases(tok_legacy, strings))
    with open(os.path.join(OUT, "decode_llama2.json"), "w", encoding="utf-8") as f:
        json.dump(llama2_decode_cases(tok_model, random.Random(11), 400), f, ensure_ascii=False)
    write_expected("llama2_added_tokens", "llama2_model",
                   hf_cases(model_variant(os.path.join(OUT, "llama2_model", "tokenizer.model"), LLAMA2_ADDED_CONFIG),
                            strings[:VARIANT_STRINGS]), patch={"patch": {}, "config": LLAMA2_ADDED_CONFIG})
    for name, patch in metaspace_patches().items():
        write_expected("llama2_metaspace_" + name, "llama2_json",
                       tokenizers_cases(os.path.join(OUT, "llama2_json", "tokenizer.json"), strings[:VARIANT_STRINGS],
                                        patch), patch={"patch": patch, "config": None}, reference="tokenizers")
    write_expected("llama2_legacy_tokenizers", "llama2_legacy",
                   tokenizers_cases(os.path.join(OUT, "llama2_legacy", "tokenizer.json"), strings[:VARIANT_STRINGS]),
                   reference="tokenizers")
    write_expected("llama2_spm", "llama2_model", spm_cases(os.path.join(OUT, "llama2_model", "tokenizer.model"),
                                                           strings), reference="sentencepiece")
    write_expected("sp2k_model", "sp2k_model", hf_cases(make_sp2k(args.data), strings))
    write_expected("sp2k_spm", "sp2k_model", spm_cases(os.path.join(OUT, "sp2k_model", "tokenizer.model"), strings,
                                                       add_eos=True), reference="sentencepiece")
    write_expected("sp2k_unigram", "sp2k_unigram", tokenizers_cases(make_sp2k_unigram(args.data), strings),
                   reference="tokenizers")
    write_expected("sp2k_unigram_cleanup", "sp2k_unigram",
                   hf_cases(variant(os.path.join(OUT, "sp2k_unigram"), "cleanup", {}, cleanup), strings[:VARIANT_STRINGS]),
                   patch={"patch": {}, "config": cleanup})

    with open(os.path.join(OUT, "nfc.json"), "w", encoding="utf-8") as f:
        json.dump(nfc_cases(random.Random(7), 600), f, ensure_ascii=False)

    g = os.path.join(OUT, "ggml")
    os.makedirs(g, exist_ok=True)
    for name in ["llama-spm", "gpt-2"]:
        for ext in [".inp", ".out"]:
            shutil.copy(os.path.join(args.data, "tokenizers", "tests", name + ext), os.path.join(g, name + ext))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
