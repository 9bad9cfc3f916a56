#!/usr/bin/env python3
"""Builds tokenizer fixtures with Hugging Face `tokenizers` and the expected encodings.

Writes into OUT_DIR: byte_level/tokenizer.json (GPT-2 / Llama 3 style: Split regex +
ByteLevel pre-tokenizer, ByteLevel decoder, ignore_merges), byte_level_nfc (the same behind
Qwen2's NFC normalizer), sentencepiece/tokenizer.json
(Llama 2 / Mistral style: Prepend + Replace normalizer, byte_fallback, Replace/ByteFallback/
Fuse/Strip decoders), metaspace/tokenizer.json (Metaspace pre-tokenizer and decoder), mistral_v3
(Metaspace(prepend_scheme="first", split=False) with the Replace/ByteFallback/Fuse/Strip decoders),
smollm (SmolLM2 / StarCoder: Digits(individual_digits) + ByteLevel with the GPT-2 regex, an
alphabet limited to the corpus), digits_grouped (Digits(individual_digits=False) + ByteLevel),
deepseek and deepseek_coder (DeepSeek-LLM / DeepSeek-Coder: a Sequence of Split regexes,
Digits(individual_digits), ByteLevel without regex, an empty Sequence normalizer, the 13 bytes
that never occur in UTF-8 as non-special added tokens), each trained on corpus.txt with added
special tokens, plus cases.json: texts (the corpus lines, random Unicode and byte strings, digit
runs in several scripts) with the ids `tokenizers` gives for each, per tokenizer.
Run: make_fixtures.py OUT_DIR [--seed N]
"""
import json
import pathlib
import random
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        trainers)

HERE = pathlib.Path(__file__).parent
SPECIAL = ["<s>", "</s>", "<unk>", "<|special|>", "<|endoftext|>"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek-LLM's Split regexes (deepseek-ai/deepseek-llm-7b-base, also DeepSeek-V2), as llama.cpp
# src/llama-vocab.cpp carries them (LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM) with the letter class
# spelled in code points: copies of it that went through NFC turned U+1F7D, U+1FBE, U+1FD3,
# U+1FDB, U+2126 and U+212A into other characters, which breaks the ranges.
DEEPSEEK_LETTERS = (
    "A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293"
    "\u0295-\u02AF\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C"
    "\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5"
    "\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77"
    "\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59"
    "\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC"
    "\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107"
    "\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139"
    "\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE"
    "\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E"
    "\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A"
    "\U00010400-\U0001044F\U000104B0-\U000104D3\U000104D8-\U000104FB\U00010C80-\U00010CB2"
    "\U00010CC0-\U00010CF2\U000118A0-\U000118DF\U0001E900-\U0001E943")
CJK_HANGUL = "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+"
DEEPSEEK_LLM_SPLITS = ["[\r\n]", "\\s?[" + DEEPSEEK_LETTERS + "]+",
                       "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
                       "\\s+$", CJK_HANGUL]
# DeepSeek-Coder's, as its tokenizer.json has them (deepseek-ai/deepseek-coder-6.7b-base).
DEEPSEEK_CODER_SPLITS = ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", CJK_HANGUL]
# The bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5-0xFF) in the ByteLevel alphabet: DeepSeek's
# BPE vocab lacks them and its added_tokens list them, normalized and not special, so the
# characters õ ÷ Á ý À ÿ ø ú þ ü ù ö û in text encode as these added tokens (which decode to
# U+FFFD).
INVALID_UTF8_BYTES = [0xC0, 0xC1] + list(range(0xF5, 0x100))


def byte_level(corpus):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def byte_level_nfc(corpus):
    """Qwen2's layout: an NFC normalizer in front of the byte-level pipeline."""
    tok = byte_level(corpus)
    tok.normalizer = normalizers.NFC()
    return tok


def sentencepiece(corpus):
    tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIAL + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def metaspace(corpus):
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIAL + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def mistral_v3(corpus):
    """Llama / Mistral converted with legacy=False (transformers' LlamaConverter, e.g. Mistral v0.3):
    no normalizer, Metaspace(prepend_scheme="first", split=False), the legacy decoder sequence."""
    tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIAL + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def train_around_digits(tok, corpus, trainer, pre_tokenizer, train_pre_tokenizer):
    """Trains with a pre-tokenizer that leaves digits alone, then encodes with the real one: the
    vocab then holds merges across digit boundaries ("12", "Ġ1", "a1"), which `tokenizers` never
    applies and which show in the ids where a Digits step splits too little."""
    tok.pre_tokenizer = train_pre_tokenizer
    tok.train_from_iterator(corpus, trainer)
    tok.pre_tokenizer = pre_tokenizer
    return tok


def smollm(corpus):
    """SmolLM2 / StarCoder: each digit on its own, then ByteLevel's GPT-2 regex on the rest.
    No initial alphabet: bytes absent from the corpus are absent from the vocab, and a BPE without
    an unk token (SmolLM2's has none) drops them."""
    tok = Tokenizer(models.BPE())
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIAL, show_progress=False)
    byte_level_gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return train_around_digits(tok, corpus, trainer, pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), byte_level_gpt2]), byte_level_gpt2)


def digits_grouped(corpus):
    """Digits(individual_digits=False): each run of digits one piece, then ByteLevel's GPT-2
    regex."""
    tok = Tokenizer(models.BPE())
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    byte_level_gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return train_around_digits(tok, corpus, trainer, pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=False), byte_level_gpt2]), byte_level_gpt2)


def _deepseek(corpus, splits):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([])
    tok.decoder = decoders.ByteLevel()
    invalid = [chr(b) for b in INVALID_UTF8_BYTES]  # ByteLevel maps 0xAE-0xFF to themselves
    alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if c not in invalid]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIAL,
                                  initial_alphabet=alphabet, show_progress=False)
    split = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in splits]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    train_around_digits(tok, corpus, trainer, pre_tokenizers.Sequence(
        split + [pre_tokenizers.Digits(individual_digits=True), byte_level]),
        pre_tokenizers.Sequence(split + [byte_level]))
    tok.add_tokens([AddedToken(c, normalized=True, special=False) for c in invalid])
    return tok


def deepseek(corpus):
    return _deepseek(corpus, DEEPSEEK_LLM_SPLITS)


def deepseek_coder(corpus):
    return _deepseek(corpus, DEEPSEEK_CODER_SPLITS)


# Numeric characters (Nd, Nl, No) beyond ASCII: Arabic-Indic, Extended Arabic-Indic, Devanagari,
# Thai, fullwidth, mathematical bold, superscripts, subscripts, fractions, Roman numerals, circled
# and parenthesized numbers, CJK 〇.
DIGITS = "٠١٢٣٤٥٦٧٨٩۴۵۶०१२३๓๔０１２３４５６７８９𝟎𝟏𝟐²³¹⁴₀₁₂½¼¾ⅫⅣⅰⅹ①⑩⑽〇"
FIXED_TEXTS = [
    "", " ", "  leading", "a<s>b", "Call 123 please", "x=42;y=7", " 2024-11-22", "3.14 ٣.١٤ ３．１４",
    "٣ apples, ３ pears, x² + y³, Ⅻ chapters, ½ cup, ① ⑩", "1,234,567.89\n\n  -17\t0x1F",
    "Ⅻ世紀12年と한국어123", "naïve øre ÿ ü", "<s>12</s>٣<|special|>",
    # Numeric since Unicode 15 (Kawi and Nag Mundari digits, Kaktovik numerals; also in corpus.txt):
    # Digits splits on Rust's char::is_numeric (Unicode 15 in tokenizers 0.20.3), newer than the
    # Unicode of Oniguruma's \p{N} (14) that Split regexes use.
    "a\U00011F50\U00011F59b \U0001E4F0 \U0001D2C0\U0001D2C1 9",
]


def random_texts(rng, n):
    pools = ["abcXYZ ", "0123456789", " \t\n", "éñüßøå", "日本語中文한국", "😀🚀❤️👩‍💻",
             "'s're've", "<s></s><|special|>", "\u0301\u0308", "()[]{};:,.!?-_=+*/\\", DIGITS,
             "0123456789" + DIGITS + "ab .,-"]
    texts = []
    for _ in range(n):
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randrange(1, 60))))
    for _ in range(n // 2):  # arbitrary code points, surrogates excluded
        texts.append("".join(chr(rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0xa0, 0xd7ff),
                                             rng.randrange(0xe000, 0x10ffff)]))
                             for _ in range(rng.randrange(1, 30))))
    return texts


def main():
    out = pathlib.Path(sys.argv[1])
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 1
    rng = random.Random(seed)
    corpus = (HERE / "corpus.txt").read_text(encoding="utf-8").splitlines()
    texts = corpus + ["\n".join(corpus)] + random_texts(rng, 200) + FIXED_TEXTS
    cases = {"texts": texts}
    for name, build in (("byte_level", byte_level), ("byte_level_nfc", byte_level_nfc),
                        ("sentencepiece", sentencepiece), ("metaspace", metaspace),
                        ("mistral_v3", mistral_v3),
                        ("smollm", smollm), ("digits_grouped", digits_grouped),
                        ("deepseek", deepseek), ("deepseek_coder", deepseek_coder)):
        tok = build(corpus * 3)
        (out / name).mkdir(parents=True, exist_ok=True)
        tok.save(str(out / name / "tokenizer.json"))
        cases[name] = [tok.encode(t, add_special_tokens=False).ids for t in texts]
        cases[name + "_decoded"] = [tok.decode(ids, skip_special_tokens=False)
                                    for ids in cases[name]]
    (out / "cases.json").write_text(json.dumps(cases, ensure_ascii=False))


if __name__ == "__main__":
    main()
