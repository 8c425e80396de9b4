#include "modes.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <string>

namespace logitops {
namespace {

// The index of `name` in a table of names, or a ValueError listing them.
template <size_t N>
int64_t parse_name(const char* argument, const char* const (&names)[N], c10::string_view name) {
  std::string accepted;
  for (size_t i = 0; i < N; ++i) {
    if (name == names[i]) return static_cast<int64_t>(i);
    accepted += (i == 0 ? "'" : (i + 1 == N ? " or '" : ", '")) + std::string(names[i]) + "'";
  }
  C10_THROW_ERROR(ValueError,
                  c10::str(argument, " must be ", accepted, ", got '", std::string(name), "'"));
}

}  // namespace

Reduction parse_reduction(c10::string_view name) {
  return static_cast<Reduction>(parse_name("reduction", kReductionNames, name));
}

Reduction parse_distillation_reduction(c10::string_view name) {
  return static_cast<Reduction>(parse_name("reduction", kDistillationReductionNames, name));
}

DivergenceKind parse_divergence_kind(c10::string_view name) {
  return static_cast<DivergenceKind>(parse_name("kind", kDivergenceKindNames, name));
}

FilterOrder parse_filter_order(c10::string_view name) {
  return static_cast<FilterOrder>(parse_name("order", kFilterOrderNames, name));
}

}  // namespace logitops
