// gqa-bench: GPU benchmarks, each against its bandwidth floor and a PyTorch peer.
//   gqa-bench kernels ...  decode attention and prefill attention kernels (kernel_bench.cu)
//   gqa-bench decode ...   whole-model decode steps of the CUDA backend (decode_bench.cc)
//   gqa-bench engine ...   the engine's own cost between decode steps (decode_bench.cc)
//   gqa-bench profile ...  the cost of the step-explaining metrics (decode_bench.cc)
#include <cstdio>
#include <string>

int KernelBenchMain(int argc, char** argv);
namespace gqa {
int DecodeBenchMain(int argc, char** argv);
int EngineBenchMain(int argc, char** argv);
int GemmBenchMain(int argc, char** argv);
int ProfileBenchMain(int argc, char** argv);
}  // namespace gqa

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "kernels") return KernelBenchMain(argc, argv);
  if (mode == "decode") return gqa::DecodeBenchMain(argc, argv);
  if (mode == "engine") return gqa::EngineBenchMain(argc, argv);
  if (mode == "gemm") return gqa::GemmBenchMain(argc, argv);
  if (mode == "profile") return gqa::ProfileBenchMain(argc, argv);
  std::fprintf(stderr,
               "usage: gqa-bench kernels [--peer CMD] [--prefill] [--only kv,batch,ctx]...\n"
               "       gqa-bench decode [--peer 'python3 client/bench/decode_peer.py'] "
               "[--only MODEL:KV:BATCH:CTX]... [--steps N] [--eager] [--deterministic] "
               "[--skinny_max_rows N] [--tensor_core_max_rows N] "
               "[--fused_max_rows N] [--skinny_fusion on|off] [--programmatic_attention on|off] "
               "[--cuda_profiler_step] [--cuda_profiler_prefill] [--temperature T] [--top_p P] "
               "[--attention_kernels auto|mma_sync|warpgroup] [--tensor_parallel_size N]\n"
               "       gqa-bench gemm [--only 1b|8b|PRODUCT] [--rows M,M,...]\n"
               "       gqa-bench engine [--batch 64] [--prompt 2048] [--new_tokens 192]\n"
               "       gqa-bench profile [--interval 16] [--steps 200]\n");
  return 2;
}
