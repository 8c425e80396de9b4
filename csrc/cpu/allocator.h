// Output allocation of the CPU kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace logitops {

// at::empty for CPU outputs, except that large ones are backed by transparent huge pages: a fresh
// [N, C] gradient otherwise costs one page fault per 4 KiB, which on the machines we measured
// takes longer than computing it. A freed buffer is kept for the next allocation of its size
// (LOGITOPS_CPU_BUFFER_CACHE=0 turns that off).
at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace logitops
