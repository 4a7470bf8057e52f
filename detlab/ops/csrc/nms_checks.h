// Input checks shared by the CPU and CUDA NMS kernels (the Python layer checks first, with
// friendlier messages; these guard direct torch.ops.detlab calls).
#pragma once

#include <ATen/ATen.h>

namespace detlab {

inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must have shape [N, 4], got ",
                    boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0),
                    "scores must have shape [N] with N = boxes.size(0) = ", boxes.size(0), ", got ",
                    scores.sizes());
  TORCH_CHECK_TYPE(boxes.scalar_type() == scores.scalar_type(), "boxes (", boxes.scalar_type(),
                   ") and scores (", scores.scalar_type(), ") must have the same dtype");
  TORCH_CHECK_VALUE(boxes.device() == scores.device(), "boxes and scores must be on the same device");
}

inline void check_batched_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs) {
  check_nms_inputs(boxes, scores);
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == boxes.size(0),
                    "idxs must have shape [N] with N = boxes.size(0) = ", boxes.size(0), ", got ",
                    idxs.sizes());
  TORCH_CHECK_VALUE(idxs.device() == boxes.device(), "idxs and boxes must be on the same device");
}

}  // namespace detlab
