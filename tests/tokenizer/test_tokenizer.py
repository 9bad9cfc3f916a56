#!/usr/bin/env python3
"""Tokenizer parity with Hugging Face `tokenizers`, on fixtures built fresh by make_fixtures.py.

For the byte-level, SentencePiece-style and Metaspace families: our ids equal `tokenizers`' ids
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
        for family in ("byte_level", "byte_level_nfc", "sentencepiece", "metaspace"):
            result = subprocess.run([args.tokenize, str(out / family), "--cases",
                                     str(out / "cases.json")], capture_output=True, text=True,
                                    check=True)
            ours = json.loads(result.stdout)
            ids_bad = [i for i, o in enumerate(ours) if o["ids"] != cases[family][i]]
            dec_bad = [i for i, o in enumerate(ours) if o["decoded"] != cases[family + "_decoded"][i]]
            stream_bad = [i for i, o in enumerate(ours)
                          if o["streamed"] != o["decoded"] or not o["prefixes_ok"]]
            plain = [i for i, t in enumerate(texts) if not any(s in t for s in SPECIALS)]
            # Byte-level BPE round-trips everything; SentencePiece-style with byte fallback and a
            # one-space Strip round-trips text without special tokens; Metaspace promises nothing.
            guaranteed = {"byte_level": range(len(texts)), "sentencepiece": plain,
                          "byte_level_nfc": [], "metaspace": []}[family]
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
