// Flags may be spelled with dashes as well as underscores (--kv-cache-memory and
// --kv_cache_memory), the way vLLM and TGI users type them.
#pragma once

namespace gqa {

// Rewrites, in place, each "--name-with-dashes[=value]" argument whose name with underscores is
// a defined absl flag (or "no" + a boolean flag). Anything else, values included, is left as it
// is, and nothing after a bare "--". Call before absl::ParseCommandLine.
void AcceptDashedFlags(int argc, char** argv);

// Makes --help (and --helpshort) list the flags the program itself defines, those of every file
// but Abseil's own (absl's default lists only flags of a file named after the binary, so
// gqa-server's main.cc printed "No flags matched"). --helpfull still adds Abseil's. Call before
// absl::ParseCommandLine.
void ShowProgramFlagsInHelp();

}  // namespace gqa
