// CPU kernels of detlab::roi_align and detlab::multiscale_roi_align (forward and backward).
//
// Layout: features are pooled from a channels-last (NHWC) copy, so every bilinear tap reads
// and accumulates C contiguous values and the inner loop vectorises; torchvision's kernel
// gathers one channel at a time from NCHW planes.
//
// Separability: RoIAlign's bilinear weight is a product of a y-weight and an x-weight
// (torchvision's w1 = hy * hx, ...), and a sample outside the map is dropped when its y or its
// x is outside. So for each output bin the kernel lists, per axis, the feature rows (columns)
// that the bin's samples touch with their summed weights, and sums row-weight * column-weight
// * value over those pairs: the same value as torchvision's sum over samples, with neighbouring
// samples' shared pixels read once. Sample positions and weights come from
// roi_align_geometry.h, i.e. are torchvision's bit for bit.
//
// Parallelism: the forward pass splits RoIs across threads; the backward pass splits channels,
// so each thread owns a disjoint slice of the gradient: no atomics, and the result does not
// depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "roi_align_geometry.h"

namespace detlab {
namespace {

// One feature level: an NHWC buffer and its scale relative to the image.
template <typename T>
struct FeatureLevel {
  T* data;  // [batch, height, width, channels]
  int64_t height, width;
  T scale;
};

// Bilinear taps of one RoI along one axis: for each output bin p, the feature rows (or
// columns) its sampling points read, with their weights summed over those points.
template <typename T>
struct AxisTaps {
  std::vector<int> begin;  // taps of bin p are [begin[p], begin[p + 1])
  std::vector<int> index;
  std::vector<T> weight;

  void build(T start, T bin_size, int grid, int pooled, int size) {
    begin.assign(1, 0);
    index.clear();
    weight.clear();
    for (int p = 0; p < pooled; ++p) {
      const int first = static_cast<int>(index.size());
      for (int i = 0; i < grid; ++i) {
        int low, high;
        T w_low, w_high;
        if (!axis_neighbours(sample_coordinate(start, bin_size, p, i, grid), size, low, high, w_low,
                             w_high)) {
          continue;
        }
        add(first, low, w_low);
        add(first, high, w_high);
      }
      begin.push_back(static_cast<int>(index.size()));
    }
  }

 private:
  // Samples move forward along the axis, so a repeated row is among the last few added. A
  // zero weight (a sample on a pixel edge, or clamped to the last row) is not merged into a
  // positive one but kept once as a tap of its own: torchvision multiplies it with the value,
  // and 0 * inf = NaN must reach the output as it does there and in detlab's CUDA kernel.
  void add(int first, int idx, T w) {
    const bool zero = w == T(0);
    for (int j = std::max(first, static_cast<int>(index.size()) - 4); j < static_cast<int>(index.size()); ++j) {
      if (index[j] == idx && (weight[j] == T(0)) == zero) {
        weight[j] += w;
        return;
      }
    }
    index.push_back(idx);
    weight.push_back(w);
  }
};

// Everything needed to pool one RoI: which map, where, and with which taps.
template <typename T>
struct RoiPlan {
  bool empty = true;  // batch index or level out of range: the output stays zero
  const FeatureLevel<T>* level = nullptr;
  int64_t batch = 0;
  T count = 1;  // sampling points per bin; torchvision divides by max(count, 1)
  AxisTaps<T> rows, cols;

  void build(const std::vector<FeatureLevel<T>>& levels, int64_t batch_size, const T* roi,
             const int64_t* roi_levels, int64_t k, int pooled_h, int pooled_w, int sampling_ratio,
             bool aligned) {
    // A level outside [0, L) means the RoI has no level (fpn_levels gives -1 to a RoI of
    // negative or NaN area): it pools zeros, as on CUDA and in torchvision's MultiScaleRoIAlign.
    const int64_t level_index = roi_levels ? roi_levels[k] : 0;
    empty = level_index < 0 || level_index >= static_cast<int64_t>(levels.size());
    if (empty) return;
    level = &levels[level_index];
    const RoiGeometry<T> g =
        roi_geometry(roi, level->scale, pooled_h, pooled_w, sampling_ratio, aligned);
    batch = g.batch_index;
    empty = batch < 0 || batch >= batch_size;
    if (empty) return;
    count = static_cast<T>(std::max<int64_t>(static_cast<int64_t>(g.grid_h) * g.grid_w, 1));
    rows.build(g.start_h, g.bin_h, g.grid_h, pooled_h, static_cast<int>(level->height));
    cols.build(g.start_w, g.bin_w, g.grid_w, pooled_w, static_cast<int>(level->width));
  }

  // Calls f(weight, offset of the pixel in the level's NHWC buffer, in units of C) for
  // every tap of bin (ph, pw).
  template <typename F>
  void for_each_tap(int ph, int pw, F&& f) const {
    const int64_t image = batch * level->height;
    for (int r = rows.begin[ph]; r < rows.begin[ph + 1]; ++r) {
      const int64_t row = (image + rows.index[r]) * level->width;
      for (int c = cols.begin[pw]; c < cols.begin[pw + 1]; ++c) {
        f(rows.weight[r] * cols.weight[c], row + cols.index[c]);
      }
    }
  }
};

// Channels handled together, sized so the accumulator stays in registers.
template <typename T>
constexpr int kChannelBlock = 128 / sizeof(T);

// Output values per thread below which the forward pass stays on one thread.
constexpr int64_t kMinOutputsPerThread = 1 << 16;

template <typename T>
void pool_forward(const std::vector<FeatureLevel<T>>& levels, int64_t batch_size, int64_t channels,
                  const T* rois, const int64_t* roi_levels, int64_t num_rois, int pooled_h,
                  int pooled_w, int sampling_ratio, bool aligned, T* out) {
  constexpr int kBlock = kChannelBlock<T>;
  const int64_t bins = static_cast<int64_t>(pooled_h) * pooled_w;
  // Waking a second thread costs more than pooling a few small RoIs: split only bigger work.
  const int64_t grain = std::max<int64_t>(1, kMinOutputsPerThread / std::max<int64_t>(1, channels * bins));
  at::parallel_for(0, num_rois, grain, [&](int64_t begin, int64_t end) {
    RoiPlan<T> plan;
    for (int64_t k = begin; k < end; ++k) {
      plan.build(levels, batch_size, rois + 5 * k, roi_levels, k, pooled_h, pooled_w, sampling_ratio,
                 aligned);
      if (plan.empty) continue;
      const T* data = plan.level->data;
      T* out_k = out + k * channels * bins;
      for (int ph = 0; ph < pooled_h; ++ph) {
        for (int pw = 0; pw < pooled_w; ++pw) {
          T* out_bin = out_k + ph * pooled_w + pw;
          for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
            const int64_t n = std::min<int64_t>(kBlock, channels - c0);
            T acc[kBlock] = {};
            plan.for_each_tap(ph, pw, [&](T w, int64_t pixel) {
              const T* src = data + pixel * channels + c0;
              if (n == kBlock) {
                for (int c = 0; c < kBlock; ++c) acc[c] += w * src[c];
              } else {
                for (int64_t c = 0; c < n; ++c) acc[c] += w * src[c];
              }
            });
            for (int64_t c = 0; c < n; ++c) out_bin[(c0 + c) * bins] = acc[c] / plan.count;
          }
        }
      }
    }
  });
}

template <typename T>
void pool_backward(const std::vector<FeatureLevel<T>>& grad_levels, int64_t batch_size,
                   int64_t channels, const T* rois, const int64_t* roi_levels, int64_t num_rois,
                   int pooled_h, int pooled_w, int sampling_ratio, bool aligned, const T* grad,
                   at::IntArrayRef grad_strides) {
  constexpr int kBlock = kChannelBlock<T>;
  const int64_t s_roi = grad_strides[0], s_ch = grad_strides[1];
  const int64_t s_h = grad_strides[2], s_w = grad_strides[3];
  const int64_t outputs = num_rois * channels * pooled_h * pooled_w;
  const int64_t grain = outputs < kMinOutputsPerThread ? channels : kBlock;
  at::parallel_for(0, channels, grain, [&](int64_t c_begin, int64_t c_end) {
    RoiPlan<T> plan;
    for (int64_t k = 0; k < num_rois; ++k) {
      plan.build(grad_levels, batch_size, rois + 5 * k, roi_levels, k, pooled_h, pooled_w,
                 sampling_ratio, aligned);
      if (plan.empty) continue;
      T* grad_in = plan.level->data;
      for (int ph = 0; ph < pooled_h; ++ph) {
        for (int pw = 0; pw < pooled_w; ++pw) {
          const T* grad_bin = grad + k * s_roi + ph * s_h + pw * s_w;
          for (int64_t c0 = c_begin; c0 < c_end; c0 += kBlock) {
            const int64_t n = std::min<int64_t>(kBlock, c_end - c0);
            T g[kBlock];
            for (int64_t c = 0; c < n; ++c) g[c] = grad_bin[(c0 + c) * s_ch] / plan.count;
            plan.for_each_tap(ph, pw, [&](T w, int64_t pixel) {
              T* dst = grad_in + pixel * channels + c0;
              if (n == kBlock) {
                for (int c = 0; c < kBlock; ++c) dst[c] += w * g[c];
              } else {
                for (int64_t c = 0; c < n; ++c) dst[c] += w * g[c];
              }
            });
          }
        }
      }
    }
  });
}

// Working precision: float for float16 / bfloat16 / float32, double for float64.
at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_rois(const at::Tensor& rois) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, "rois must have shape [K, 5], got ",
                    rois.sizes());
}

at::Tensor multiscale_forward_cpu(at::TensorList features, const at::Tensor& rois,
                                  const std::optional<at::Tensor>& levels,
                                  at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                  int64_t sampling_ratio, bool aligned) {
  check_rois(rois);
  TORCH_CHECK_VALUE(!features.empty() && features.size() == scales.size(),
                    "need one scale per feature level, got ", features.size(), " levels and ",
                    scales.size(), " scales");
  const at::Tensor& first = features[0];
  const int64_t batch = first.size(0), channels = first.size(1), num_rois = rois.size(0);
  for (const auto& f : features) {
    TORCH_CHECK_VALUE(f.dim() == 4 && f.size(0) == batch && f.size(1) == channels,
                      "every feature level must have shape [", batch, ", ", channels,
                      ", H, W], got ", f.sizes());
  }
  at::Tensor out = at::zeros({num_rois, channels, pooled_h, pooled_w},
                             first.options().dtype(compute_type(first.scalar_type())));
  if (out.numel() > 0) {
    const at::Tensor levels_c = levels ? levels->to(at::kLong).contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "detlab::roi_align", [&] {
      std::vector<at::Tensor> nhwc;
      std::vector<FeatureLevel<scalar_t>> views;
      for (size_t l = 0; l < features.size(); ++l) {
        nhwc.push_back(features[l].to(out.scalar_type()).permute({0, 2, 3, 1}).contiguous());
        views.push_back({nhwc.back().data_ptr<scalar_t>(), features[l].size(2), features[l].size(3),
                         static_cast<scalar_t>(scales[l])});
      }
      const at::Tensor rois_c = rois.to(out.scalar_type()).contiguous();
      pool_forward(views, batch, channels, rois_c.data_ptr<scalar_t>(),
                   levels ? levels_c.data_ptr<int64_t>() : nullptr, num_rois,
                   static_cast<int>(pooled_h), static_cast<int>(pooled_w),
                   static_cast<int>(sampling_ratio), aligned, out.data_ptr<scalar_t>());
    });
  }
  return out.to(first.scalar_type());
}

std::vector<at::Tensor> multiscale_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
    int64_t channels, at::IntArrayRef heights, at::IntArrayRef widths, int64_t sampling_ratio,
    bool aligned) {
  check_rois(rois);
  const at::ScalarType type = compute_type(grad.scalar_type());
  std::vector<at::Tensor> grad_nhwc;
  for (size_t l = 0; l < heights.size(); ++l) {
    grad_nhwc.push_back(at::zeros({batch_size, heights[l], widths[l], channels},
                                  grad.options().dtype(type)));
  }
  if (grad.numel() > 0) {
    const at::Tensor grad_c = grad.to(type);
    const at::Tensor levels_c = levels ? levels->to(at::kLong).contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(type, "detlab::roi_align_backward", [&] {
      std::vector<FeatureLevel<scalar_t>> views;
      for (size_t l = 0; l < heights.size(); ++l) {
        views.push_back({grad_nhwc[l].data_ptr<scalar_t>(), heights[l], widths[l],
                         static_cast<scalar_t>(scales[l])});
      }
      const at::Tensor rois_c = rois.to(type).contiguous();
      pool_backward(views, batch_size, channels, rois_c.data_ptr<scalar_t>(),
                    levels ? levels_c.data_ptr<int64_t>() : nullptr, rois.size(0),
                    static_cast<int>(pooled_h), static_cast<int>(pooled_w),
                    static_cast<int>(sampling_ratio), aligned, grad_c.data_ptr<scalar_t>(),
                    grad_c.strides());
    });
  }
  std::vector<at::Tensor> grads;
  for (const auto& g : grad_nhwc) {
    grads.push_back(g.permute({0, 3, 1, 2}).to(grad.scalar_type()).contiguous());
  }
  return grads;
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                 bool aligned) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input must have shape [B, C, H, W], got ", input.sizes());
  return multiscale_forward_cpu({input}, rois, std::nullopt, {spatial_scale}, pooled_h, pooled_w,
                                sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width,
                                  int64_t sampling_ratio, bool aligned) {
  return multiscale_backward_cpu(grad, rois, std::nullopt, {spatial_scale}, pooled_h, pooled_w,
                                 batch_size, channels, {height}, {width}, sampling_ratio, aligned)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(detlab, CPU, m) {
  m.impl("roi_align", TORCH_FN(roi_align_forward_cpu));
  m.impl("_roi_align_backward", TORCH_FN(roi_align_backward_cpu));
  m.impl("multiscale_roi_align", TORCH_FN(multiscale_forward_cpu));
  m.impl("_multiscale_roi_align_backward", TORCH_FN(multiscale_backward_cpu));
}

}  // namespace detlab
