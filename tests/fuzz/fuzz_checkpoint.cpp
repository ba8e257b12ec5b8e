// libFuzzer target: the checkpoint loader of vwn-train --resume and vwn-sample (read_checkpoint, then the model
// and optimiser tensors through load_model). A mutated checkpoint almost never keeps a valid checksum, so when the
// input is a valid safetensors file the target also tries it with its checksum recomputed: that lets the mutations
// reach the metadata, the settings checks and the tensor checks behind the checksum.
#include <fuzz/fuzz_input.hpp>
#include <train/checkpoint.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace train = vwn::train;
  const auto& path = vwn::fuzz::input_path(".checkpoint.safetensors");
  vwn::fuzz::write_file(path, data, size);
  auto load = [&] {
    const train::checkpoint c = train::read_checkpoint(path);
    // Models the fuzzer can afford to build many times a second (the memory check itself is tested in ctest).
    if (train::estimate_memory(c.config).total() > 64e6) return;
    (void)train::load_model(c);
  };
  vwn::fuzz::expecting_refusals(load);
  vwn::fuzz::expecting_refusals([&] {
    vwn::safetensors::file f = vwn::safetensors::file::read(path);
    if (!f.metadata.count("checksum")) return;
    f.metadata["checksum"] = train::detail::checkpoint_checksum(f);
    f.write(path);
    load();
  });
  return 0;
}
