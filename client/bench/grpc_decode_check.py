#!/usr/bin/env python3
"""The gRPC check of `gqa-bench decode`: one streamed request through the whole server decodes
within 5% of the backend's decode step time.

Starts gqa-server on a random-weight Llama-3.2-1B-shaped model (8 KV heads, --load_format dummy),
streams one greedy request (512 prompt tokens, 256 new, EOS ignored) with gqa-cli, and compares
its time per token after the first, (total - time to first token) / (tokens - 1), with
`gqa-bench decode --only 1b:8:1:640` (the step at the request's mean context).
Usage: grpc_decode_check.py SERVER_BIN CLI_BIN BENCH_BIN [--backend cuda]"""
import json
import os
import subprocess
import sys
import tempfile
import time

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "torch_dtype": "bfloat16", "tie_word_embeddings": True, "bos_token_id": 128000,
    "eos_token_id": 128001,
}
PROMPT, NEW = 512, 256


def main():
    server_bin, cli_bin, bench_bin = sys.argv[1:4]
    backend = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--backend" else "cuda"
    with tempfile.TemporaryDirectory() as model:
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump(CONFIG, f)
        ports = os.path.join(model, "ports")
        server = subprocess.Popen(
            [server_bin, f"--model={model}", "--load_format=dummy", f"--backend={backend}",
             "--port=0", "--metrics_port=0", "--http_port=0", f"--port_file={ports}", "--max_model_len=2048",
             "--max_num_seqs=8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                if os.path.exists(ports) and os.path.getsize(ports) > 0:
                    break
                time.sleep(0.5)
            grpc_port = open(ports).read().split()[0]
            ids = ",".join(str(1000 + i) for i in range(PROMPT))
            args = [cli_bin, f"--server=127.0.0.1:{grpc_port}", f"--ids={ids}",
                    f"--max_new_tokens={NEW}", "--ignore_eos", "--json"]
            subprocess.run(args, check=True, capture_output=True)  # warm-up
            out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        finally:
            server.terminate()
            server.wait()
    final = [json.loads(line) for line in out.splitlines() if line.strip()][-1]
    timing, usage = final["timing"], final["usage"]
    per_token_ms = ((timing["total_seconds"] - timing["time_to_first_token_seconds"])
                    / (usage["completion_tokens"] - 1) * 1e3)
    bench = subprocess.run([bench_bin, "decode", "--only", "1b:8:1:640", "--steps", "50"],
                           check=True, capture_output=True, text=True).stdout
    row = next(line for line in bench.splitlines() if line.strip().startswith("1b"))
    step_ms = float(row.split("|")[1].split()[0])
    ratio = per_token_ms / step_ms
    print(f"grpc stream: {per_token_ms:.3f} ms per token after the first ({usage['completion_tokens']}"
          f" tokens); backend decode step {step_ms:.3f} ms; ratio {ratio:.3f} "
          f"({'within' if ratio <= 1.05 else 'NOT within'} 5%)")


if __name__ == "__main__":
    main()
