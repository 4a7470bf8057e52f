// The IoU test of torchvision's CUDA NMS kernel (devIoU), expression by expression, so that
// detlab's CUDA NMS keeps exactly the boxes torchvision's does. The CPU kernels use it for
// float16 / bfloat16, which torchvision's CPU NMS does not accept: both devices then agree.
#pragma once

#include <ATen/AccumulateType.h>

#include "common.h"

namespace detlab {

// True when IoU(a, b) > threshold. a and b point at (x1, y1, x2, y2); a is the
// higher-scoring box. Widths are formed in T, areas and the ratio in T's accumulate type.
template <typename T>
DETLAB_HD bool iou_exceeds_cuda_semantics(const T* a, const T* b, float threshold) {
  using acc_t = at::acc_type<T, /*is_cuda=*/true>;
  T left = max_of(a[0], b[0]), right = min_of(a[2], b[2]);
  T top = max_of(a[1], b[1]), bottom = min_of(a[3], b[3]);
  T width = max_of(static_cast<T>(right - left), (T)0);
  T height = max_of(static_cast<T>(bottom - top), (T)0);
  acc_t inter = (acc_t)width * height;
  acc_t area_a = ((acc_t)a[2] - a[0]) * (a[3] - a[1]);
  acc_t area_b = ((acc_t)b[2] - b[0]) * (b[3] - b[1]);
  return (inter / (area_a + area_b - inter)) > threshold;
}

}  // namespace detlab
