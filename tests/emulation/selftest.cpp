// Tests of the CUDA emulator itself (csrc/emulation), torch-free: tests/test_emulation.py
// compiles this file with the host compiler (once plainly, once under ThreadSanitizer) and runs
// one case per process: `selftest CASE`. Exit code 0 and "ok" when the case behaved as expected.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../csrc/cuda/cross_entropy_kernels.cuh"
#include "../../csrc/cuda/distillation_kernels.cuh"

namespace cuda = logitops::cuda;
using logitops::emulation::launch;

namespace {

constexpr int kThreads = 64;

// Each thread writes its slot, then reads its neighbour's: `synchronized` decides whether a
// barrier orders the two.
void neighbour_kernel(int* out, bool synchronized) {
  __shared__ int slots[kThreads];
  slots[threadIdx.x] = int(threadIdx.x) * 3;
  if (synchronized) __syncthreads();
  out[threadIdx.x] = slots[(threadIdx.x + 1) % kThreads];
}

void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}

void partial_warp_kernel(int* out) {
  int value = int(threadIdx.x);
  if (threadIdx.x != 5) value = __shfl_xor_sync(0xffffffffu, value, 1);
  out[threadIdx.x] = value;
}

void misaligned_kernel(const float* in, float* out) {
  const auto v = cuda::load_vector<float, 4>(in + 1, true);
  out[threadIdx.x] = v.val[0];
}

// Each thread loads one 16-byte vector and, unaligned, the four floats after the first one;
// thread 0 stores one vector. Reads: 64 x 16 + 64 x 16 bytes, of which distinct: the 16 floats
// of `in` read by vectors (the block's threads share them) cover the unaligned reads too.
void traffic_kernel(const float* in, float* out) {
  const auto v = cuda::load_vector<float, 4>(in + 4 * (threadIdx.x % 4), true);
  const auto w = cuda::load_vector<float, 4>(in + 1, false);
  if (threadIdx.x == 0) cuda::store_vector<float, 4>(out, v, true);
  if (threadIdx.x == 1) cuda::store_element(out + 4, w.val[0]);
}

void warp_ops_kernel(unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  unsigned sum = lane;
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const unsigned up = __shfl_up_sync(0xffffffffu, lane, 1);
  const unsigned ballot = __ballot_sync(0xffffffffu, lane % 3 == 0);
  const unsigned peers = __match_any_sync(0xffffffffu, lane / 8);
  unsigned active = 0;
  if (lane < 10) active = __activemask();  // the lanes that take the branch
  __shared__ unsigned counter;
  if (threadIdx.x == 0) counter = 0;
  __syncthreads();
  atomicAdd(&counter, 1u);
  __syncthreads();
  out[threadIdx.x * 6 + 0] = sum;
  out[threadIdx.x * 6 + 1] = up;
  out[threadIdx.x * 6 + 2] = ballot;
  out[threadIdx.x * 6 + 3] = peers;
  out[threadIdx.x * 6 + 4] = active;
  out[threadIdx.x * 6 + 5] = counter;
}

int expect_error(const std::function<void()>& run, const char* needle) {
  try {
    run();
  } catch (const std::exception& error) {
    if (std::strstr(error.what(), needle) != nullptr) {
      std::printf("ok: %s\n", error.what());
      return 0;
    }
    std::printf("wrong error: %s\n", error.what());
    return 1;
  }
  std::printf("no error\n");
  return 1;
}

// The real cross-entropy forward and backward kernels (with their block reductions over shared
// memory) on random rows, against a float64 reference: under ThreadSanitizer, their workload.
int cross_entropy_case() {
  const int64_t rows = 5, classes = 3001;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> logits(rows * classes);
  for (auto& z : logits) z = normal(rng);
  std::vector<int64_t> target = {0, 17, -100, 3000, 1234};
  cuda::CrossEntropyArgs<float, float> args{};
  args.logits = logits.data();
  args.row_stride = classes;
  args.num_rows = rows;
  args.num_classes = classes;
  args.target = target.data();
  args.ignore_index = -100;
  args.label_smoothing = 0.1f;
  std::vector<float> lse(rows), loss(rows), weight(rows), upstream(rows, 1.f), grad(rows * classes);
  const int threads = cuda::block_threads_for<float>(classes);
  launch("cross_entropy_forward_kernel", cuda::row_grid(rows), dim3(threads), 0, [&] {
    cuda::cross_entropy_forward_kernel<float, float>(args, lse.data(), loss.data(), weight.data());
  });
  launch("cross_entropy_backward_kernel", cuda::row_grid(rows), dim3(threads), 0, [&] {
    cuda::cross_entropy_backward_kernel<float, float>(args, lse.data(), upstream.data(), nullptr,
                                                      grad.data());
  });
  for (int64_t i = 0; i < rows; ++i) {
    double m = -INFINITY, s = 0, mean = 0;
    for (int64_t j = 0; j < classes; ++j) m = std::max(m, double(logits[i * classes + j]));
    for (int64_t j = 0; j < classes; ++j) {
      s += std::exp(double(logits[i * classes + j]) - m);
      mean += double(logits[i * classes + j]) / classes;
    }
    const double ref_lse = m + std::log(s);
    double ref_loss = 0;
    if (target[i] != -100) {
      ref_loss = 0.9 * (ref_lse - logits[i * classes + target[i]]) + 0.1 * (ref_lse - mean);
    }
    if (std::fabs(lse[i] - ref_lse) > 1e-4 || std::fabs(loss[i] - ref_loss) > 1e-3) {
      std::printf("row %lld: lse %g vs %g, loss %g vs %g\n", (long long)i, lse[i], ref_lse, loss[i],
                  ref_loss);
      return 1;
    }
    double grad_sum = 0;
    for (int64_t j = 0; j < classes; ++j) grad_sum += grad[i * classes + j];
    if (std::fabs(grad_sum) > 1e-4) {
      std::printf("row %lld: gradient sums to %g\n", (long long)i, grad_sum);
      return 1;
    }
  }
  std::printf("ok\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "";
  std::vector<int> out(kThreads, -1);
  if (which == "synchronized" || which == "race") {
    const bool synchronized = which == "synchronized";
    launch("neighbour_kernel", dim3(2), dim3(kThreads), 0,
           [&] { neighbour_kernel(out.data(), synchronized); });
    for (int k = 0; k < kThreads; ++k) {
      if (synchronized && out[k] != ((k + 1) % kThreads) * 3) {
        std::printf("thread %d read %d\n", k, out[k]);
        return 1;
      }
    }
    std::printf("ok\n");
    return 0;
  }
  if (which == "divergent_barrier") {
    return expect_error(
        [&] {
          launch("divergent_barrier_kernel", dim3(1), dim3(kThreads), 0,
                 [&] { divergent_barrier_kernel(out.data()); });
        },
        "divergent_barrier_kernel, block (0, 0, 0): deadlock: __syncthreads reached by 16 of 64");
  }
  if (which == "partial_warp") {
    return expect_error(
        [&] {
          launch("partial_warp_kernel", dim3(1), dim3(kThreads), 0,
                 [&] { partial_warp_kernel(out.data()); });
        },
        "partial_warp_kernel, block (0, 0, 0): deadlock: __shfl_xor_sync in warp 0");
  }
  if (which == "misaligned") {
    alignas(16) float in[8] = {};
    std::vector<float> result(kThreads);
    return expect_error(
        [&] {
          launch("misaligned_kernel", dim3(1), dim3(kThreads), 0,
                 [&] { misaligned_kernel(in, result.data()); });
        },
        "kernel misaligned_kernel, block (0, 0, 0), thread (0, 0, 0): misaligned 16-byte vector");
  }
  if (which == "traffic") {
    alignas(16) float in[16] = {};
    alignas(16) float result[8] = {};
    logitops::emulation::start_traffic_log();
    launch("traffic_kernel", dim3(2), dim3(kThreads), 0, [&] { traffic_kernel(in, result); });
    launch("no_traffic", dim3(1), dim3(kThreads), 0, [] {});
    const auto log = logitops::emulation::stop_traffic_log();
    launch("after_log", dim3(1), dim3(kThreads), 0, [&] { traffic_kernel(in, result); });
    const bool good = log.size() == 2 && log[0].kernel == "traffic_kernel" &&
                      log[0].bytes_read == 2 * 64 * 32 && log[0].distinct_read == 64 &&
                      log[0].bytes_written == 2 * 20 && log[0].distinct_written == 20 &&
                      log[1].kernel == "no_traffic" && log[1].bytes_read == 0 &&
                      logitops::emulation::stop_traffic_log().empty();
    if (!good && !log.empty()) {
      std::printf("%zu launches; first: %s read %llu (%llu distinct), wrote %llu (%llu)\n",
                  log.size(), log[0].kernel.c_str(), (unsigned long long)log[0].bytes_read,
                  (unsigned long long)log[0].distinct_read,
                  (unsigned long long)log[0].bytes_written,
                  (unsigned long long)log[0].distinct_written);
    }
    std::printf(good ? "ok\n" : "wrong\n");
    return good ? 0 : 1;
  }
  if (which == "launch_limits") {
    return expect_error([&] { launch("too_big", dim3(1), dim3(2048), 0, [] {}); },
                        "kernel too_big: invalid launch: block of 2048 threads");
  }
  if (which == "warp_ops") {
    std::vector<unsigned> result(kThreads * 6);
    launch("warp_ops_kernel", dim3(1), dim3(kThreads), 0, [&] { warp_ops_kernel(result.data()); });
    for (unsigned t = 0; t < kThreads; ++t) {
      const unsigned lane = t % 32;
      unsigned ballot = 0;
      for (unsigned k = 0; k < 32; k += 3) ballot |= 1u << k;
      const unsigned expected[6] = {496,
                                    lane == 0 ? 0 : lane - 1,
                                    ballot,
                                    0xffu << (lane / 8 * 8),
                                    lane < 10 ? 0x3ffu : 0,
                                    kThreads};
      for (int k = 0; k < 6; ++k) {
        if (result[t * 6 + k] != expected[k]) {
          std::printf("thread %u value %d: %u, expected %u\n", t, k, result[t * 6 + k],
                      expected[k]);
          return 1;
        }
      }
    }
    std::printf("ok\n");
    return 0;
  }
  if (which == "cross_entropy") return cross_entropy_case();
  std::printf("unknown case %s\n", which.c_str());
  return 2;
}
