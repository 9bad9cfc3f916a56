// The Hugging Face tensor names of a Llama-family decoder, written once: the checkpoint's list of
// expected tensors, the converter and both backends name tensors through these.
#pragma once

namespace gqa::tensor_names {

inline constexpr char kEmbed[] = "model.embed_tokens.weight";
inline constexpr char kFinalNorm[] = "model.norm.weight";
inline constexpr char kLmHead[] = "lm_head.weight";

// Per layer: "model.layers.<layer>." + one of these (LayerTensorName).
inline constexpr char kInputNorm[] = "input_layernorm.weight";
inline constexpr char kQ[] = "self_attn.q_proj.weight";
inline constexpr char kK[] = "self_attn.k_proj.weight";
inline constexpr char kV[] = "self_attn.v_proj.weight";
inline constexpr char kO[] = "self_attn.o_proj.weight";
inline constexpr char kQBias[] = "self_attn.q_proj.bias";
inline constexpr char kKBias[] = "self_attn.k_proj.bias";
inline constexpr char kVBias[] = "self_attn.v_proj.bias";
inline constexpr char kOBias[] = "self_attn.o_proj.bias";
inline constexpr char kPostNorm[] = "post_attention_layernorm.weight";
inline constexpr char kGate[] = "mlp.gate_proj.weight";
inline constexpr char kUp[] = "mlp.up_proj.weight";
inline constexpr char kDown[] = "mlp.down_proj.weight";
inline constexpr char kGateBias[] = "mlp.gate_proj.bias";
inline constexpr char kUpBias[] = "mlp.up_proj.bias";
inline constexpr char kDownBias[] = "mlp.down_proj.bias";
// Optional FP8 KV cache scales (vLLM's names): one value, or one per KV head.
inline constexpr char kKScale[] = "self_attn.k_scale";
inline constexpr char kVScale[] = "self_attn.v_scale";

}  // namespace gqa::tensor_names
