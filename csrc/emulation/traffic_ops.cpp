// The emulator's traffic log as ops of their own namespace, logitops_emulation, for the tests
// that check each kernel's global-memory bytes against its design (tests/test_traffic.py). Built
// into logitops._C_emulation only.
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cuda_emulation.h"

namespace logitops {
namespace {

void start_traffic_log() { emulation::start_traffic_log(); }

// One entry per launch since start_traffic_log: the kernel's name, bytes read and written, and
// distinct bytes read and written.
std::tuple<std::vector<std::string>, std::vector<int64_t>, std::vector<int64_t>,
           std::vector<int64_t>, std::vector<int64_t>>
stop_traffic_log() {
  std::vector<std::string> kernels;
  std::vector<int64_t> read, written, distinct_read, distinct_written;
  for (const auto& entry : emulation::stop_traffic_log()) {
    kernels.push_back(entry.kernel);
    read.push_back(int64_t(entry.bytes_read));
    written.push_back(int64_t(entry.bytes_written));
    distinct_read.push_back(int64_t(entry.distinct_read));
    distinct_written.push_back(int64_t(entry.distinct_written));
  }
  return {kernels, read, written, distinct_read, distinct_written};
}

}  // namespace

TORCH_LIBRARY(logitops_emulation, m) {
  m.def("start_traffic_log() -> ()", &start_traffic_log);
  m.def("stop_traffic_log() -> (str[], int[], int[], int[], int[])", &stop_traffic_log);
}

}  // namespace logitops
