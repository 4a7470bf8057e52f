// CUDA kernels of detlab::roi_align and detlab::multiscale_roi_align (forward and backward).
//
// Layout: features are read from a channels-last (NHWC) copy in the working precision, and a
// warp's 32 lanes handle 32 consecutive channels of the same output bin. Every bilinear tap is
// then one coalesced 128-byte read (forward) or one coalesced run of atomic adds (backward),
// where torchvision's one-thread-per-output kernel gathers single values from NCHW planes.
// Output bins are staged in shared memory so the NCHW output (and the incoming gradient) is
// written (read) in contiguous runs.
//
// Multi-level: one launch serves every FPN level; each RoI carries its level index and the
// kernel picks that level's map and scale (no per-level Python loop, no gather/scatter of RoIs).
//
// Sample positions and weights come from roi_align_geometry.h (torchvision's expressions).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "roi_align_geometry.h"

namespace detlab {
namespace {

constexpr int kLanes = 32;       // channels per block (one warp's width; BlockTile relies on it)
constexpr int kWarps = 8;        // bins processed concurrently per block
constexpr int kBinChunk = 64;    // bins staged in shared memory at a time
constexpr int kMaxLevels = 8;

// Feature levels passed by value to the kernel: NHWC buffers, their sizes and scales.
template <typename T>
struct Levels {
  T* data[kMaxLevels];  // [batch, height, width, channels]
  int height[kMaxLevels];
  int width[kMaxLevels];
  T scale[kMaxLevels];
  int count;
};

// What every RoI is pooled to, and how.
struct PoolShape {
  int64_t batch_size, channels;
  int pooled_h, pooled_w, sampling_ratio;
  bool aligned;
};

// The (RoI, tile of 32 channels) a block works on, and this thread's place in it.
struct BlockTile {
  int64_t roi, first_channel, channel;
  int lane, warp, bins;

  __device__ explicit BlockTile(const PoolShape& shape)
      : roi(blockIdx.x),
        first_channel(static_cast<int64_t>(blockIdx.y) * 32),
        channel(first_channel + threadIdx.x % 32),
        lane(threadIdx.x % 32),
        warp(threadIdx.x / 32),
        bins(shape.pooled_h * shape.pooled_w) {}
};

// Where RoI k pools from; `valid` is false for a batch index or level outside range, whose
// output stays zero. The Python layer reports bad batch indices before they get here; a level
// of -1 is how it marks a RoI without an FPN level (negative or NaN area).
template <typename T>
struct RoiSource {
  bool valid;
  RoiGeometry<T> geometry;
  T* data;  // the RoI's image in its level, NHWC
  int height, width;
  T count;  // sampling points per bin, at least 1

  __device__ RoiSource(const Levels<T>& levels, const T* rois, const int64_t* roi_levels, int64_t k,
                       const PoolShape& shape) {
    const int64_t level = roi_levels ? roi_levels[k] : 0;
    valid = level >= 0 && level < levels.count;
    if (!valid) return;
    geometry = roi_geometry(rois + 5 * k, levels.scale[level], shape.pooled_h, shape.pooled_w,
                            shape.sampling_ratio, shape.aligned);
    valid = geometry.batch_index >= 0 && geometry.batch_index < shape.batch_size;
    height = levels.height[level];
    width = levels.width[level];
    data = levels.data[level] + geometry.batch_index * height * width * shape.channels;
    count = static_cast<T>(max_of<int64_t>(static_cast<int64_t>(geometry.grid_h) * geometry.grid_w, 1));
  }

  // Calls f(weight, offset of the pixel in units of channels) for the 4 taps of every
  // sampling point of bin (ph, pw) that lies on the map.
  template <typename F>
  __device__ void for_each_tap(int ph, int pw, F&& f) const {
    const RoiGeometry<T>& g = geometry;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      int y_low, y_high;
      T wy_low, wy_high;
      if (!axis_neighbours(sample_coordinate(g.start_h, g.bin_h, ph, iy, g.grid_h), height, y_low,
                           y_high, wy_low, wy_high)) {
        continue;
      }
      for (int ix = 0; ix < g.grid_w; ++ix) {
        int x_low, x_high;
        T wx_low, wx_high;
        if (!axis_neighbours(sample_coordinate(g.start_w, g.bin_w, pw, ix, g.grid_w), width, x_low,
                             x_high, wx_low, wx_high)) {
          continue;
        }
        f(wy_low * wx_low, static_cast<int64_t>(y_low) * width + x_low);
        f(wy_low * wx_high, static_cast<int64_t>(y_low) * width + x_high);
        f(wy_high * wx_low, static_cast<int64_t>(y_high) * width + x_low);
        f(wy_high * wx_high, static_cast<int64_t>(y_high) * width + x_high);
      }
    }
  }
};

// grid = (RoIs, channel tiles of 32); block = kWarps warps. out: [K, C, pooled_h, pooled_w].
template <typename T>
__global__ void __launch_bounds__(kLanes * kWarps)
    roi_align_forward_kernel(Levels<T> levels, const T* rois, const int64_t* roi_levels, PoolShape shape,
                             T* out) {
  __shared__ T tile[kBinChunk][kLanes + 1];  // +1: no bank conflicts on the transposed read
  const BlockTile at(shape);
  const RoiSource<T> source(levels, rois, roi_levels, at.roi, shape);
  const int64_t channels = shape.channels;
  T* out_k = out + at.roi * channels * at.bins;
  for (int chunk = 0; chunk < at.bins; chunk += kBinChunk) {
    const int n = min(kBinChunk, at.bins - chunk);
    for (int b = at.warp; b < n; b += kWarps) {
      T acc = 0;
      if (source.valid && at.channel < channels) {
        const int bin = chunk + b;
        source.for_each_tap(bin / shape.pooled_w, bin % shape.pooled_w,
                            [&](T w, int64_t pixel) { acc += w * source.data[pixel * channels + at.channel]; });
        acc /= source.count;
      }
      tile[b][at.lane] = acc;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < kLanes * n; t += blockDim.x) {
      const int64_t c = at.first_channel + t / n;
      if (c < channels) out_k[c * at.bins + chunk + t % n] = tile[t % n][t / n];
    }
    __syncthreads();
  }
}

// grid = (RoIs, channel tiles of 32). Adds into the NHWC gradient buffers of `levels`.
template <typename T>
__global__ void __launch_bounds__(kLanes * kWarps)
    roi_align_backward_kernel(Levels<T> levels, const T* rois, const int64_t* roi_levels, PoolShape shape,
                              const T* grad, int64_t s_roi, int64_t s_ch, int64_t s_h, int64_t s_w) {
  __shared__ T tile[kBinChunk][kLanes + 1];
  const BlockTile at(shape);
  const RoiSource<T> source(levels, rois, roi_levels, at.roi, shape);
  if (!source.valid) return;  // uniform over the block
  const int64_t channels = shape.channels;
  const T* grad_k = grad + at.roi * s_roi;
  for (int chunk = 0; chunk < at.bins; chunk += kBinChunk) {
    const int n = min(kBinChunk, at.bins - chunk);
    for (int t = threadIdx.x; t < kLanes * n; t += blockDim.x) {
      const int64_t c = at.first_channel + t / n;
      const int bin = chunk + t % n;
      tile[t % n][t / n] =
          c < channels ? grad_k[c * s_ch + (bin / shape.pooled_w) * s_h + (bin % shape.pooled_w) * s_w] : T(0);
    }
    __syncthreads();
    if (at.channel < channels) {
      for (int b = at.warp; b < n; b += kWarps) {
        const int bin = chunk + b;
        const T g = tile[b][at.lane] / source.count;
        source.for_each_tap(bin / shape.pooled_w, bin % shape.pooled_w, [&](T w, int64_t pixel) {
          atomicAdd(source.data + pixel * channels + at.channel, w * g);
        });
      }
    }
    __syncthreads();
  }
}

// Working precision: float for float16 / bfloat16 / float32, double for float64.
at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_common(const at::Tensor& rois, const std::optional<at::Tensor>& levels, size_t num_levels,
                  size_t num_scales) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, "rois must have shape [K, 5], got ", rois.sizes());
  TORCH_CHECK_VALUE(num_levels >= 1 && num_levels == num_scales, "need one scale per feature level, got ",
                    num_levels, " levels and ", num_scales, " scales");
  TORCH_CHECK_VALUE(num_levels <= kMaxLevels, "at most ", kMaxLevels, " feature levels, got ", num_levels);
  TORCH_CHECK_VALUE(!levels || (levels->dim() == 1 && levels->size(0) == rois.size(0)),
                    "levels must have shape [K] with K = rois.size(0)");
  TORCH_CHECK_VALUE(rois.size(0) <= std::numeric_limits<int32_t>::max(), "too many RoIs: ", rois.size(0));
}

PoolShape pool_shape(int64_t batch_size, int64_t channels, int64_t pooled_h, int64_t pooled_w,
                     int64_t sampling_ratio, bool aligned) {
  return {batch_size, channels, static_cast<int>(pooled_h), static_cast<int>(pooled_w),
          static_cast<int>(sampling_ratio), aligned};
}

dim3 launch_grid(int64_t num_rois, int64_t channels) {
  return dim3(static_cast<unsigned>(num_rois), static_cast<unsigned>((channels + kLanes - 1) / kLanes));
}

at::Tensor multiscale_forward_cuda(at::TensorList features, const at::Tensor& rois,
                                   const std::optional<at::Tensor>& levels, at::ArrayRef<double> scales,
                                   int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  check_common(rois, levels, features.size(), scales.size());
  const at::Tensor& first = features[0];
  const c10::cuda::CUDAGuard guard(first.device());
  const int64_t batch = first.size(0), channels = first.size(1), num_rois = rois.size(0);
  for (const auto& f : features) {
    TORCH_CHECK_VALUE(f.dim() == 4 && f.size(0) == batch && f.size(1) == channels && f.device() == first.device(),
                      "every feature level must have shape [", batch, ", ", channels,
                      ", H, W] on one device, got ", f.sizes());
  }
  const at::ScalarType type = compute_type(first.scalar_type());
  at::Tensor out = at::zeros({num_rois, channels, pooled_h, pooled_w}, first.options().dtype(type));
  if (out.numel() == 0) return out.to(first.scalar_type());
  const at::Tensor levels_c = levels ? levels->to(rois.device(), at::kLong).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(type, "detlab::roi_align_cuda", [&] {
    std::vector<at::Tensor> nhwc;
    Levels<scalar_t> views{};
    views.count = static_cast<int>(features.size());
    for (size_t l = 0; l < features.size(); ++l) {
      nhwc.push_back(features[l].to(type).permute({0, 2, 3, 1}).contiguous());
      views.data[l] = nhwc.back().data_ptr<scalar_t>();
      views.height[l] = static_cast<int>(features[l].size(2));
      views.width[l] = static_cast<int>(features[l].size(3));
      views.scale[l] = static_cast<scalar_t>(scales[l]);
    }
    const at::Tensor rois_c = rois.to(type).contiguous();
    roi_align_forward_kernel<scalar_t><<<launch_grid(num_rois, channels), kLanes * kWarps, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
        views, rois_c.data_ptr<scalar_t>(), levels ? levels_c.data_ptr<int64_t>() : nullptr,
        pool_shape(batch, channels, pooled_h, pooled_w, sampling_ratio, aligned), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.to(first.scalar_type());
}

std::vector<at::Tensor> multiscale_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                                 const std::optional<at::Tensor>& levels,
                                                 at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                                 int64_t batch_size, int64_t channels, at::IntArrayRef heights,
                                                 at::IntArrayRef widths, int64_t sampling_ratio, bool aligned) {
  check_common(rois, levels, heights.size(), scales.size());
  TORCH_CHECK_VALUE(widths.size() == heights.size(), "one width per level");
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::ScalarType type = compute_type(grad.scalar_type());
  std::vector<at::Tensor> grad_nhwc;
  for (size_t l = 0; l < heights.size(); ++l) {
    grad_nhwc.push_back(at::zeros({batch_size, heights[l], widths[l], channels}, grad.options().dtype(type)));
  }
  if (grad.numel() > 0) {
    const at::Tensor grad_c = grad.to(type);  // strides are passed: no copy for float32
    const at::Tensor levels_c = levels ? levels->to(rois.device(), at::kLong).contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(type, "detlab::roi_align_backward_cuda", [&] {
      Levels<scalar_t> views{};
      views.count = static_cast<int>(heights.size());
      for (size_t l = 0; l < heights.size(); ++l) {
        views.data[l] = grad_nhwc[l].data_ptr<scalar_t>();
        views.height[l] = static_cast<int>(heights[l]);
        views.width[l] = static_cast<int>(widths[l]);
        views.scale[l] = static_cast<scalar_t>(scales[l]);
      }
      const at::Tensor rois_c = rois.to(type).contiguous();
      roi_align_backward_kernel<scalar_t><<<launch_grid(rois.size(0), channels), kLanes * kWarps, 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
          views, rois_c.data_ptr<scalar_t>(), levels ? levels_c.data_ptr<int64_t>() : nullptr,
          pool_shape(batch_size, channels, pooled_h, pooled_w, sampling_ratio, aligned), grad_c.data_ptr<scalar_t>(),
          grad_c.stride(0), grad_c.stride(1), grad_c.stride(2), grad_c.stride(3));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  std::vector<at::Tensor> grads;
  for (const auto& g : grad_nhwc) grads.push_back(g.permute({0, 3, 1, 2}).to(grad.scalar_type()).contiguous());
  return grads;
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input must have shape [B, C, H, W], got ", input.sizes());
  return multiscale_forward_cuda({input}, rois, std::nullopt, {spatial_scale}, pooled_h, pooled_w,
                                 sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  return multiscale_backward_cuda(grad, rois, std::nullopt, {spatial_scale}, pooled_h, pooled_w, batch_size,
                                  channels, {height}, {width}, sampling_ratio, aligned)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(detlab, CUDA, m) {
  m.impl("roi_align", TORCH_FN(roi_align_forward_cuda));
  m.impl("_roi_align_backward", TORCH_FN(roi_align_backward_cuda));
  m.impl("multiscale_roi_align", TORCH_FN(multiscale_forward_cuda));
  m.impl("_multiscale_roi_align_backward", TORCH_FN(multiscale_backward_cuda));
}

}  // namespace detlab
