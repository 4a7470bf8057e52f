// Schemas of detlab's native ops, and their autocast kernels.
//
// Device kernels live in *_cpu.cpp and *_cuda.cu; autograd and the fake (meta) kernels that
// torch.compile needs are registered from Python (detlab/ops/_registrations.py).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

TORCH_LIBRARY(detlab, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int batch_size, int channels, int height, int width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "multiscale_roi_align(Tensor[] features, Tensor rois, Tensor? levels, float[] scales, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_multiscale_roi_align_backward(Tensor grad, Tensor rois, Tensor? levels, float[] scales, "
      "int pooled_height, int pooled_width, int batch_size, int channels, int[] heights, "
      "int[] widths, int sampling_ratio, bool aligned) -> Tensor[]");
}

namespace detlab {
namespace {

// Under autocast the ops run in float32, as torchvision's do; RoIAlign then returns the
// dtype of its input features, NMS returns indices.
template <c10::DeviceType device>
struct Autocast {
  static at::Tensor cast(const at::Tensor& t) { return at::autocast::cached_cast(at::kFloat, t, device); }

  static at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("detlab::nms", "").typed<decltype(nms)>();
    return op.call(cast(boxes), cast(scores), iou_threshold);
  }

  static at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                double iou_threshold) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("detlab::batched_nms", "").typed<decltype(batched_nms)>();
    return op.call(cast(boxes), cast(scores), idxs, iou_threshold);
  }

  static at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                              bool aligned) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("detlab::roi_align", "").typed<decltype(roi_align)>();
    return op
        .call(cast(input), cast(rois), spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
        .to(input.scalar_type());
  }

  static at::Tensor multiscale_roi_align(at::TensorList features, const at::Tensor& rois,
                                         const std::optional<at::Tensor>& levels,
                                         at::ArrayRef<double> scales, int64_t pooled_height,
                                         int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("detlab::multiscale_roi_align", "")
                         .typed<decltype(multiscale_roi_align)>();
    std::vector<at::Tensor> cast_features;
    for (const auto& f : features) cast_features.push_back(cast(f));
    return op
        .call(cast_features, cast(rois), levels, scales, pooled_height, pooled_width, sampling_ratio,
              aligned)
        .to(features[0].scalar_type());
  }
};

template <c10::DeviceType device>
void register_autocast(torch::Library& m) {
  m.impl("nms", TORCH_FN(Autocast<device>::nms));
  m.impl("batched_nms", TORCH_FN(Autocast<device>::batched_nms));
  m.impl("roi_align", TORCH_FN(Autocast<device>::roi_align));
  m.impl("multiscale_roi_align", TORCH_FN(Autocast<device>::multiscale_roi_align));
}

}  // namespace

TORCH_LIBRARY_IMPL(detlab, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }
TORCH_LIBRARY_IMPL(detlab, AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }

}  // namespace detlab
