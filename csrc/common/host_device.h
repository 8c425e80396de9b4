// LOGITOPS_HD: a function of the torch-free common headers, for the host and, under nvcc, the
// device too.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LOGITOPS_HD __host__ __device__ __forceinline__
#else
#define LOGITOPS_HD inline
#endif
