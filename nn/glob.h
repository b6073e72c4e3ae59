// Glob matching over dotted names: '*' matches any run of characters (dots included),
// '?' one character. "blocks.*.attn.qkv.*", "*.bias", "head.*".
#pragma once
#include <string>
#include <vector>

namespace dg::nn {

bool glob_match(const std::string& pattern, const std::string& name);
bool glob_match_any(const std::vector<std::string>& patterns, const std::string& name);

}  // namespace dg::nn
