#!/usr/bin/env python3
"""Builds tokenizer fixtures with Hugging Face `tokenizers` and the expected encodings.

Writes into OUT_DIR: byte_level/tokenizer.json (GPT-2 / Llama 3 style: Split regex +
ByteLevel pre-tokenizer, ByteLevel decoder, ignore_merges), byte_level_nfc (the same behind
Qwen2's NFC normalizer), sentencepiece/tokenizer.json
(Llama 2 / Mistral style: Prepend + Replace normalizer, byte_fallback, Replace/ByteFallback/
Fuse/Strip decoders), metaspace/tokenizer.json (Metaspace pre-tokenizer and decoder), each
trained on corpus.txt with added special tokens, plus cases.json: texts (the corpus lines,
random Unicode and byte strings) with the ids `tokenizers` gives for each, per tokenizer.
Run: make_fixtures.py OUT_DIR [--seed N]
"""
import json
import pathlib
import random
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

HERE = pathlib.Path(__file__).parent
SPECIAL = ["<s>", "</s>", "<unk>", "<|special|>", "<|endoftext|>"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


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


def random_texts(rng, n):
    pools = ["abcXYZ ", "0123456789", " \t\n", "éñüßøå", "日本語中文한국", "😀🚀❤️👩‍💻",
             "'s're've", "<s></s><|special|>", "\u0301\u0308", "()[]{};:,.!?-_=+*/\\"]
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
    texts = corpus + ["\n".join(corpus)] + random_texts(rng, 200) + ["", " ", "  leading", "a<s>b"]
    cases = {"texts": texts}
    for name, build in (("byte_level", byte_level), ("byte_level_nfc", byte_level_nfc),
                        ("sentencepiece", sentencepiece), ("metaspace", metaspace)):
        tok = build(corpus * 3)
        (out / name).mkdir(parents=True, exist_ok=True)
        tok.save(str(out / name / "tokenizer.json"))
        cases[name] = [tok.encode(t, add_special_tokens=False).ids for t in texts]
        cases[name + "_decoded"] = [tok.decode(ids, skip_special_tokens=False)
                                    for ids in cases[name]]
    (out / "cases.json").write_text(json.dumps(cases, ensure_ascii=False))


if __name__ == "__main__":
    main()
