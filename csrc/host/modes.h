// Parsing the ops' mode names (csrc/common/modes.h) into their enums, with a ValueError that
// names the argument and the accepted names.
#pragma once

#include <c10/util/string_view.h>

#include "../common/modes.h"

namespace logitops {

Reduction parse_reduction(c10::string_view name);               // none | mean | sum
Reduction parse_distillation_reduction(c10::string_view name);  // none | batchmean | sum
DivergenceKind parse_divergence_kind(c10::string_view name);    // forward | reverse | jsd
FilterOrder parse_filter_order(c10::string_view name);          // hf | vllm | joint

}  // namespace logitops
