// libFuzzer target: the safetensors reader (examples/io/safetensors.hpp) on any file. A file it accepts must
// write back and read again to the same tensors and metadata.
#include <fuzz/fuzz_input.hpp>
#include <io/safetensors.hpp>

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace st = vwn::safetensors;
  const auto& path = vwn::fuzz::input_path(".safetensors");
  vwn::fuzz::write_file(path, data, size);
  vwn::fuzz::expecting_refusals([&] {
    const st::file f = st::file::read(path);
    const auto copy = std::filesystem::path(path.string() + ".copy");
    f.write(copy);
    const st::file g = st::file::read(copy);
    if (g.metadata != f.metadata || g.names() != f.names()) std::abort();
    for (const std::string& name : f.names()) {
      const st::tensor &a = f.at(name), &b = g.at(name);
      if (a.type != b.type || a.shape != b.shape || a.bytes != b.bytes) std::abort();
    }
  });
  return 0;
}
