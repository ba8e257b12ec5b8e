#pragma once
// What the fuzz targets share: the input written to a file of this process (the programs read files, and the
// targets go through the same entry points), and the rule for what counts as a finding.
//
// A target returns normally when the code under test accepts the input or refuses it with the error it documents
// (std::runtime_error or std::invalid_argument with a message). Anything else is a finding: another exception
// (libFuzzer reports it as a crash), a sanitizer report, an allocation over -malloc_limit_mb, a time-out.

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace vwn::fuzz {

/// A file private to this process, rewritten with each input.
inline const std::filesystem::path& input_path(const char* suffix) {
  static const std::filesystem::path p = [&] {
    const char* dir = std::getenv("TMPDIR");
    return std::filesystem::path(dir && *dir ? dir : "/tmp") /
           ("vwn-fuzz-" + std::to_string(::getpid()) + suffix);
  }();
  return p;
}

/// Writes `size` bytes at `data` to `path`; aborts when it cannot (not a finding of the code under test).
inline void write_file(const std::filesystem::path& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

/// Runs `f`; documented refusals are fine, but their message must say something.
template <class F>
void expecting_refusals(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).empty()) std::abort();
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).empty()) std::abort();
  }
}

}  // namespace vwn::fuzz
