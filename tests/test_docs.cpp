// The README's CLI section and the CLI's --help agree: every option a command's --help prints is
// in the section, and every option the section names is one that some --help prints (--help
// itself aside). docs/tour.md stays true: its commands run, print the lines it quotes, and each
// of its file:line links points at a line holding the code the link shows.
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

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
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
  for (const char* cmd : {"train", "eval", "predict", "grads", "inspect", "merge", "export-peft", "import-peft", "demo", "sweep", "cost", "sensitivity", "sft"}) {
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

TEST_CASE("docs: the tour's commands run and print what it quotes; its file:line links point at what they show") {
  const std::string src = DG_SOURCE_DIR, tour = read_text(src + "/docs/tour.md");
  REQUIRE(!tour.empty());
  // ```sh blocks: one `deltagrad ...` command each; a ```text block right after it quotes output lines
  static const std::regex block("```sh\n(deltagrad [^\n]*)\n```\n(\n```text\n([\\s\\S]*?)```)?");
  int commands = 0;
  for (auto it = std::sregex_iterator(tour.begin(), tour.end(), block); it != std::sregex_iterator(); ++it) {
    const std::string cmd = (*it)[1].str(), quoted = (*it)[3].str();
    const std::string out = run("cd '" + src + "' && '" + DG_BUILD_DIR + "/tools/'" + cmd + " 2>&1");
    ++commands;
    std::istringstream lines(quoted);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) CHECK_MESSAGE(out.find(line) != std::string::npos, "`", cmd, "` no longer prints: ", line);
  }
  CHECK(commands >= 2);
  static const std::regex link("\\[`([^`]+)`\\]\\(\\.\\./([^#)]+)#L([0-9]+)\\)");
  int links = 0;
  for (auto it = std::sregex_iterator(tour.begin(), tour.end(), link); it != std::sregex_iterator(); ++it) {
    const std::string code = (*it)[1].str(), file = (*it)[2].str();
    const size_t at = std::stoul((*it)[3].str());
    std::istringstream text(read_text(src + "/" + file));
    std::string line;
    for (size_t n = 0; n < at && std::getline(text, line);) ++n;
    CHECK_MESSAGE(line.find(code) != std::string::npos, "docs/tour.md: ", file, ":", at, " is `", line, "`, not `", code, "`");
    ++links;
  }
  CHECK(links >= 20);
}
