#!/usr/bin/env python3
"""Encode throughput, single thread: gqa-tokenize beside Hugging Face `tokenizers`, on the same
corpus (tests/tokenizer/corpus.txt, one line per text) and the same trained tokenizers.
Usage: tokenizer_bench.py GQA_TOKENIZE [--repeat N]
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    tool = sys.argv[1]
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 200
    corpus = ROOT / "tests" / "tokenizer" / "corpus.txt"
    lines = corpus.read_text(encoding="utf-8").splitlines()
    size = sum(len(l.encode()) for l in lines)
    print(f"corpus: {corpus.name}, {len(lines)} lines, {size} bytes, x{repeat}; single thread "
          "(ours: Encode per line; tokenizers: encode_batch per pass)")
    print("cold: the first pass over the corpus (empty word caches); warm: the next passes")
    print(f"{'tokenizer':14s} {'ours cold':>10s} {'hf cold':>8s} {'ours warm':>10s} "
          f"{'hf warm':>8s} {'warm ratio':>10s}   (MB/s)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "tests" / "tokenizer" / "make_fixtures.py"),
                        tmp], check=True)
        for family in ("byte_level", "sentencepiece", "metaspace"):
            ours = json.loads(subprocess.run([tool, f"{tmp}/{family}", "--bench", str(corpus),
                                              "--repeat", str(repeat)], capture_output=True,
                                             text=True, check=True).stdout)
            tok = Tokenizer.from_file(f"{tmp}/{family}/tokenizer.json")
            # encode_batch: one Python call per pass, so Python's per-call cost does not count
            # against them (TOKENIZERS_PARALLELISM=false keeps it on one thread).
            start = time.perf_counter()
            tok.encode_batch(lines, add_special_tokens=False)
            cold = size / (time.perf_counter() - start) / 1e6
            start = time.perf_counter()
            for _ in range(repeat):
                tok.encode_batch(lines, add_special_tokens=False)
            theirs = size * repeat / (time.perf_counter() - start) / 1e6
            print(f"{family:14s} {ours['cold_mb_per_s']:10.2f} {cold:8.2f} "
                  f"{ours['mb_per_s']:10.2f} {theirs:8.2f} {ours['mb_per_s'] / theirs:9.2f}x")


if __name__ == "__main__":
    main()
