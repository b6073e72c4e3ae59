// The README's CLI section and the CLI's --help agree: every option a command's --help prints is
// in the section, and every option the section names is one that some --help prints (--help
// itself aside).
#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "tests/test_util.h"

namespace {

std::set<std::string> options_in(const std::string& text) {
  std::set<std::string> out;
  static const std::regex opt("--[a-z][a-z0-9-]*");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), opt); it != std::sregex_iterator(); ++it)
    if (it->str() != "--help") out.insert(it->str());
  return out;
}

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  REQUIRE(::pclose(p) == 0);
  return out;
}

}  // namespace

TEST_CASE("docs: every option --help prints is in the README's CLI section, and the reverse") {
  const std::string cli = std::string(DG_BUILD_DIR) + "/tools/deltagrad";
  std::string help = run(cli + " --help");
  for (const char* cmd : {"train", "eval", "predict", "grads", "inspect", "merge", "export-peft", "import-peft", "demo", "sweep", "sensitivity", "sft"}) {
    const std::string h = run(cli + " " + cmd + " --help");
    CHECK_MESSAGE(!options_in(h).empty(), cmd);
    help += h;
  }
  std::ifstream f(std::string(DG_SOURCE_DIR) + "/README.md");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string readme = ss.str();
  const size_t from = readme.find("\n## The CLI\n");
  REQUIRE(from != std::string::npos);
  const size_t to = readme.find("\n## ", from + 1);
  const std::set<std::string> in_help = options_in(help), in_readme = options_in(readme.substr(from, to - from));
  for (const std::string& o : in_help) CHECK_MESSAGE(in_readme.count(o), o, " is in --help but not in the README's CLI section");
  for (const std::string& o : in_readme) CHECK_MESSAGE(in_help.count(o), o, " is in the README's CLI section but in no --help");
  CHECK(in_help.size() > 20);  // the parse found the options
}
