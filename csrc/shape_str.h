// Shapes in error messages as plain strings, "[3, 4]". Messages are built from std::string pieces
// only, not the templated ostream operator for ArrayRef.
#pragma once
#include <c10/util/ArrayRef.h>
#include <string>

namespace fft_tensor {

inline std::string shape_str(c10::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  return s + "]";
}

}  // namespace fft_tensor
