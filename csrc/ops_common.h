// Transitional: csrc/cpu/sampling.cpp still includes this header; the host helpers live in
// host/checks.h, host/operands.h and host/reduction.h. Remove it when sampling.cpp includes
// host/checks.h instead.
#pragma once

#include "host/checks.h"
