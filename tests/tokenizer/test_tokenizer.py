#!/usr/bin/env python3
"""Tokenizer parity with Hugging Face `tokenizers`, on fixtures built fresh by make_fixtures.py.

For the byte-level (Llama 3, Qwen2, SmolLM2, DeepSeek), SentencePiece-style and Metaspace families,
Digits pre-tokenizers included: our ids equal `tokenizers`' ids
for every text (corpus lines, the whole corpus, random Unicode and byte-ish strings, special
tokens inside text); our decode equals theirs; streaming one token at a time yields the full
decode; decode(encode(x)) == x where the family guarantees it; unsupported components are
refused with a message naming them.
"""
import argparse
import json
import pathlib
import random
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).parent
SPECIALS = ["<s>", "</s>", "<unk>", "<|special|>", "<|endoftext|>"]
FAMILIES = ("byte_level", "byte_level_nfc", "sentencepiece", "metaspace", "mistral_v3", "smollm",
            "digits_grouped", "deepseek", "deepseek_coder")
# DeepSeek's added tokens for the bytes that never occur in UTF-8: these characters in text encode
# as those tokens, which decode to U+FFFD.
DEEPSEEK_ADDED = set(chr(b) for b in [0xC0, 0xC1] + list(range(0xF5, 0x100)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenize", required=True)
    args = parser.parse_args()
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"seed {seed}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        subprocess.run([sys.executable, str(HERE / "make_fixtures.py"), tmp, "--seed", str(seed)],
                       check=True)
        cases = json.loads((out / "cases.json").read_text(encoding="utf-8"))
        texts = cases["texts"]
        corpus_chars = set("".join((HERE / "corpus.txt").read_text(encoding="utf-8").splitlines()))
        for family in FAMILIES:
            result = subprocess.run([args.tokenize, str(out / family), "--cases",
                                     str(out / "cases.json")], capture_output=True, text=True,
                                    check=True)
            ours = json.loads(result.stdout)
            ids_bad = [i for i, o in enumerate(ours) if o["ids"] != cases[family][i]]
            dec_bad = [i for i, o in enumerate(ours) if o["decoded"] != cases[family + "_decoded"][i]]
            stream_bad = [i for i, o in enumerate(ours)
                          if o["streamed"] != o["decoded"] or not o["prefixes_ok"]]
            plain = [i for i, t in enumerate(texts) if not any(s in t for s in SPECIALS)]
            # Byte-level BPE over the whole byte alphabet round-trips everything; SentencePiece
            # style with byte fallback and a one-space Strip round-trips text without special tokens
            # (behind Metaspace's prepend_scheme "first": text not already starting with a space);
            # SmolLM2-style BPE without an unk token drops bytes outside the corpus's alphabet;
            # DeepSeek round-trips all but its added byte characters; Metaspace promises nothing.
            guaranteed = {
                "byte_level": range(len(texts)), "digits_grouped": range(len(texts)),
                "sentencepiece": plain, "byte_level_nfc": [], "metaspace": [],
                "mistral_v3": [i for i in plain if not texts[i].startswith(" ")],
                "smollm": [i for i, t in enumerate(texts) if set(t) <= corpus_chars],
                "deepseek": [i for i, t in enumerate(texts) if not DEEPSEEK_ADDED & set(t)],
                "deepseek_coder": [i for i, t in enumerate(texts) if not DEEPSEEK_ADDED & set(t)],
            }[family]
            trip_bad = [i for i in guaranteed if ours[i]["decoded"] != texts[i]]
            for name, bad in (("ids", ids_bad), ("decode", dec_bad), ("streaming", stream_bad),
                              ("round trip", trip_bad)):
                ok = not bad
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {family:14s} {name:10s} "
                      f"{len(texts) - len(bad)}/{len(texts)}", flush=True)
                for i in bad[:3]:
                    print(f"     text {texts[i]!r:.80}\n     ours {ours[i]}\n"
                          f"     hf   {cases[family][i]} {cases[family + '_decoded'][i]!r:.80}")
        # The BOS of prompts comes from the post-processor's TemplateProcessing, also when it is
        # nested in a Sequence (Llama 3: ByteLevel, then TemplateProcessing "<s> $A").
        from tokenizers import Tokenizer
        doc = json.loads((out / "byte_level" / "tokenizer.json").read_text(encoding="utf-8"))
        template = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                               {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                             {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {"<s>": {"id": "<s>", "ids": [doc["model"]["vocab"]["<s>"]],
                                               "tokens": ["<s>"]}}}
        for name, processor in (("template", template),
                                ("sequence", {"type": "Sequence", "processors": [
                                    {"type": "ByteLevel", "add_prefix_space": True,
                                     "trim_offsets": False, "use_regex": True}, template]})):
            bos_doc = dict(doc, post_processor=processor)
            bos_dir = out / f"bos-{name}"
            bos_dir.mkdir()
            (bos_dir / "tokenizer.json").write_text(json.dumps(bos_doc), encoding="utf-8")
            theirs = Tokenizer.from_file(str(bos_dir / "tokenizer.json"))
            result = subprocess.run([args.tokenize, str(bos_dir), "--cases",
                                     str(out / "cases.json")], capture_output=True, text=True,
                                    check=True)
            bad = [i for i, o in enumerate(json.loads(result.stdout))
                   if o["prompt_ids"] != theirs.encode(texts[i]).ids]
            failures += bool(bad)
            print(f"{'ok  ' if not bad else 'FAIL'} prompt BOS from a {name} post-processor "
                  f"{len(texts) - len(bad)}/{len(texts)}", flush=True)
        # Unsupported components are refused, naming them.
        doc = json.loads((out / "byte_level" / "tokenizer.json").read_text(encoding="utf-8"))
        for key, value, expect in (("normalizer", {"type": "Lowercase"}, "normalizer Lowercase"),
                                   ("decoder", {"type": "WordPiece"}, "decoder WordPiece")):
            bad_doc = dict(doc)
            bad_doc[key] = value
            bad_dir = out / f"bad-{key}"
            bad_dir.mkdir()
            (bad_dir / "tokenizer.json").write_text(json.dumps(bad_doc), encoding="utf-8")
            result = subprocess.run([args.tokenize, str(bad_dir), "--cases",
                                     str(out / "cases.json")], capture_output=True, text=True)
            ok = result.returncode == 1 and expect in result.stderr
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} refuses {expect}: {result.stderr.strip()}")
    print("all tokenizer checks passed" if failures == 0 else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
