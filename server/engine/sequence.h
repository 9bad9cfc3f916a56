// A request inside the engine: its tokens, how many of them have K/V in the cache, its blocks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "engine/block_allocator.h"
#include "engine/block_list.h"
#include "engine/request.h"
#include "engine/text_stream.h"

namespace gqa {

struct Sequence {
  explicit Sequence(Request r, uint64_t engine_id)
      : request(std::move(r)),
        id(engine_id),
        tokens(request.prompt),
        num_prompt_tokens(static_cast<int>(request.prompt.size())) {
    // The first prompt token has no context: logprob 0, no alternatives.
    if (request.logprobs.prompt_top_logprobs >= 0 && !tokens.empty()) {
      prompt_logprobs.emplace_back().token = tokens[0];
    }
  }

  // Placeholders included (async scheduling: tokens sampled by a step in flight).
  int num_tokens() const { return static_cast<int>(tokens.size()); }
  int num_generated() const { return num_tokens() - num_prompt_tokens; }
  // The tokens known on the host: without the trailing placeholders.
  int num_known_tokens() const { return num_tokens() - num_placeholders; }
  int num_known_generated() const { return num_known_tokens() - num_prompt_tokens; }
  int32_t last_known_token() const { return tokens[num_known_tokens() - 1]; }
  // Tokens computed or in a step in flight; the next chunk starts there.
  int num_scheduled() const { return num_computed + num_in_flight; }
  // Tokens still to schedule before the next token can be sampled.
  int num_uncomputed() const { return num_tokens() - num_scheduled(); }
  // Its next chunk needs the logits of every token: prompt logprobs are asked for and not all
  // computed yet (after a preemption, the recomputed prompt's are not computed again).
  bool needs_prompt_logprobs() const {
    return request.logprobs.prompt_top_logprobs >= 0 && !prompt_logprobs_sent &&
           static_cast<int>(prompt_logprobs.size()) < num_prompt_tokens;
  }

  Request request;
  uint64_t id;                  // unique in this engine
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int num_prompt_tokens;
  int num_computed = 0;          // tokens whose K/V are in the cache
  BlockList blocks;              // the cache blocks holding positions [0, num_computed)
  uint64_t admission_order = 0;  // larger = admitted later (preempted first)
  int preemptions = 0;
  std::optional<Clock::time_point> first_scheduled;
  std::optional<Clock::time_point> first_token;
  std::optional<Clock::time_point> last_token;
  std::unique_ptr<TextStream> text;            // when the engine has a tokenizer
  std::string pending_text;                    // this step's text, until it is emitted
  std::vector<TokenLogprob> pending_logprobs;  // this step's token's, until it is emitted
  std::vector<TokenLogprob> prompt_logprobs;   // one per prompt position computed so far
  bool prompt_logprobs_sent = false;           // given to the client in its first event
  // Prefix caching: the leading full blocks already in the cache (found there or registered
  // once computed), and the chain up to the last of them.
  int num_cached_blocks = 0;
  BlockChain cache_chain;
  int cached_prompt_tokens = 0;     // prompt tokens found in the cache at the first admission
  int num_cached_at_admission = 0;  // tokens found in the cache at the latest admission
  // Blocks of its row in the backend's block tables; -1: no row (waiting, never sent).
  int blocks_in_tables = -1;
  // Async scheduling (Scheduler: steps scheduled before the previous one's tokens are known):
  int num_in_flight = 0;     // tokens [num_computed, num_scheduled()) are in steps in flight
  int num_placeholders = 0;  // trailing kPlaceholderToken tokens, sampled by steps in flight
  int sample_row = -1;       // its sampling row in the last step that samples for it
  uint64_t last_step = 0;    // the last step it was scheduled in (Scheduler's step ids, from 1)
};

}  // namespace gqa
