// Reading the files a user names (configs, run configs, checkpoints): only regular files are
// opened for reading. A FIFO given as --peft blocked forever in open(); a directory failed deep
// in the stream library ("basic_filebuf::underflow error ... Is a directory") without the file's
// name. Every reader goes through here, so each refusal names the file and says what it is.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace dg {

// Throws, naming `what` and `path`, unless `path` is an existing regular file (symlinks are
// followed). For readers that open the file themselves (gzopen, stb).
void check_regular_file(const std::string& path, const std::string& what);

// The whole file. Opens without blocking and checks the opened file itself, so a FIFO or a
// device swapped in after a check is refused too; files over `max_bytes` are refused unread.
std::string read_regular_file(const std::string& path, const std::string& what,
                              uint64_t max_bytes = UINT64_MAX);

// A JSON file (at most 256 MiB). A parse error names the file and the byte, with the parser's
// excerpt escaped (printable()): never raw file bytes in a message.
nlohmann::json read_json_file(const std::string& path, const std::string& what);

// `s` with every byte sequence that is not UTF-8 replaced by U+FFFD: JSON holds UTF-8 only, and a
// folder or file name need not be UTF-8 (nlohmann::json throws on dumping such a string).
std::string valid_utf8(const std::string& s);

}  // namespace dg
