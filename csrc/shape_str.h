// Shapes in error messages as plain strings, "[3, 4]". Messages are built from std::string pieces
// only (integers through std::to_string), never by streaming an integer or an ArrayRef into
// c10::str: on the device's build (torch 2.11, CUDA 13, /opt/gcc) every check whose message streamed
// an int64 segfaulted while the message was formatted, and the ones built from strings did not.
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
