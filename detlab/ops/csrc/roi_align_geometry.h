// Where RoIAlign samples, shared by the CPU and CUDA kernels.
//
// Every expression repeats torchvision's roi_align kernels in the same order and types, so
// sample positions and bilinear weights are bitwise identical to torchvision's for float32
// and float64 (half and bfloat16 inputs are sampled in float32). Only the order in which the
// weighted values are summed differs.
#pragma once

#include <cmath>

#include "common.h"

namespace detlab {

// One RoI mapped onto a feature map of a given scale. T is the accumulate type.
template <typename T>
struct RoiGeometry {
  int64_t batch_index;
  T start_h, start_w;  // top-left corner in feature-map pixels
  T bin_h, bin_w;      // size of one output bin in feature-map pixels
  int grid_h, grid_w;  // sampling points per bin along each axis (0: the bin is empty)
};

// Sampling points per bin when sampling_ratio <= 0: ceil(roi_size / pooled_size), clamped so
// that a non-finite or negative size gives an empty bin instead of undefined behaviour.
template <typename T>
DETLAB_HD int adaptive_grid(T roi_size, int pooled_size) {
  T grid = ceil(roi_size / pooled_size);
  if (!(grid > 0)) return 0;                  // negative, zero or NaN
  if (grid > (T)(1 << 20)) return 1 << 20;    // only absurd boxes get here
  return static_cast<int>(grid);
}

// roi = (batch_index, x1, y1, x2, y2) in image pixels.
template <typename T>
DETLAB_HD RoiGeometry<T> roi_geometry(
    const T* roi, T spatial_scale, int pooled_h, int pooled_w, int sampling_ratio, bool aligned) {
  RoiGeometry<T> g;
  g.batch_index = static_cast<int64_t>(roi[0]);
  T offset = aligned ? (T)0.5 : (T)0.0;
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  T end_w = roi[3] * spatial_scale - offset;
  T end_h = roi[4] * spatial_scale - offset;
  T roi_w = end_w - g.start_w;
  T roi_h = end_h - g.start_h;
  if (!aligned) {  // legacy mode: malformed RoIs are forced to 1x1
    roi_w = max_of(roi_w, (T)1.);
    roi_h = max_of(roi_h, (T)1.);
  }
  g.bin_h = static_cast<T>(roi_h) / static_cast<T>(pooled_h);
  g.bin_w = static_cast<T>(roi_w) / static_cast<T>(pooled_w);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_h, pooled_h);
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_w, pooled_w);
  // A NaN or infinite corner leaves the RoI without sampling points: it pools zeros and gets
  // no gradient. torchvision's result there is undefined (zeros, NaN, or an out-of-bounds
  // read when a NaN sample position is cast to a pixel index); detlab promises zeros.
  if (!(is_finite(g.start_w) && is_finite(g.start_h) && is_finite(end_w) && is_finite(end_h))) {
    g.grid_h = g.grid_w = 0;
  }
  return g;
}

// Coordinate of sampling point `i` of bin `p` along one axis.
template <typename T>
DETLAB_HD T sample_coordinate(T start, T bin_size, int p, int i, int grid) {
  return start + p * bin_size + static_cast<T>(i + .5f) * bin_size / static_cast<T>(grid);
}

// Bilinear neighbours of one sample coordinate along one axis of length `size`.
// Returns false when the sample lies outside [-1, size] (it then contributes zero); the
// comparison is written so that NaN is rejected too.
template <typename T>
DETLAB_HD bool axis_neighbours(T coord, int size, int& low, int& high, T& w_low, T& w_high) {
  if (!(coord >= -1.0 && coord <= size)) return false;
  if (coord <= 0) coord = 0;
  low = static_cast<int>(coord);
  if (low >= size - 1) {
    high = low = size - 1;
    coord = (T)low;
  } else {
    high = low + 1;
  }
  w_high = coord - low;
  w_low = 1. - w_high;
  return true;
}

}  // namespace detlab
