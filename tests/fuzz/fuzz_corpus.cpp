// libFuzzer target: the text corpus loader and the batches drawn from it. The first two bytes choose the context
// (1..64) and the validation fraction; the rest is the corpus file. A corpus that loads must give batches whose
// tokens are bytes of its split, and the same batches for the same seed.
#include <fuzz/fuzz_input.hpp>
#include <transformer/data.hpp>

#include <algorithm>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace data_ = vwn::data;
  if (size < 2) return 0;
  const vwn::index_t context = 1 + data[0] % 64;
  const double val_fraction = double(data[1]) / 256.0;  // 0 is refused, as documented
  const auto& path = vwn::fuzz::input_path(".txt");
  vwn::fuzz::write_file(path, data + 2, size - 2);
  vwn::fuzz::expecting_refusals([&] {
    const data_::text_corpus corpus = data_::text_corpus::load(path, context, val_fraction);
    if (std::size_t(corpus.size()) != size - 2) std::abort();
    const vwn::index_t B = 1 + data[0] % 3;
    data_::batch_sampler a(corpus.train(), B, context, 7), b(corpus.train(), B, context, 7);
    data_::batch x, y;
    for (int i = 0; i < 3; ++i) {
      a.next(x);
      b.next(y);
      if (x.inputs != y.inputs || x.targets1 != y.targets1 || x.targets2 != y.targets2) std::abort();
      if (x.inputs.size() != std::size_t(B * context)) std::abort();
    }
    const vwn::index_t count = std::min<vwn::index_t>(2, data_::max_evaluation_batches(corpus.validation().size(), B, context));
    if (count > 0) (void)data_::evaluation_batches(corpus.validation(), B, context, count);
  });
  return 0;
}
