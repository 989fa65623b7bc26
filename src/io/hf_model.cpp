#include "core/error.h"
#include "io/model_source.h"

namespace primal {

std::unique_ptr<ModelSource> open_hf_model(const std::string& dir) {
  fail("{}: HF checkpoint folders are not supported yet", dir);
}

}  // namespace primal
