// CPU kernels of detlab::nms and detlab::batched_nms.
//
// Same kept indices, in the same order, as torchvision's CPU kernels: boxes are visited in the
// order torchvision's own sort call gives, and the IoU test is torchvision's expression. What
// changes is which pairs get tested. torchvision tests every surviving pair (quadratic); here a
// box is tested only against kept boxes that could possibly suppress it, found through a
// spatial hash. Pruning uses two facts that hold for any two boxes a, b:
//   * IoU(a, b) <= 1-D IoU of their x-intervals (and of their y-intervals), so IoU > t needs
//     |centre_x(a) - centre_x(b)| < (1 - t) / (2t) * min(width(a), width(b))  (same for y);
//   * IoU(a, b) <= min(area) / max(area), so IoU > t needs the areas within a factor 1/t.
// Both bounds are applied with a 1% margin on t, far wider than any rounding in the IoU test,
// so they never skip a pair the exact test would suppress. That holds while the test's
// products are normal numbers: boxes of area below 2^-100 (float; 2^-1000 for double) have
// subnormal areas whose rounding is unbounded relative to them, and an IoU threshold below
// 2^-40 is smaller than the absolute rounding left there. Either makes a call test every kept
// box, as torchvision does (the fuzz suite found the first: boxes of side 1e-22).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "box_iou.h"
#include "nms_checks.h"

namespace detlab {
namespace {

// torchvision's CPU test for float and double: areas in T, the ratio compared in double.
template <typename T>
bool iou_exceeds_cpu_semantics(const T* a, const T* b, double threshold) {
  T xx1 = std::max(a[0], b[0]), yy1 = std::max(a[1], b[1]);
  T xx2 = std::min(a[2], b[2]), yy2 = std::min(a[3], b[3]);
  T w = std::max(static_cast<T>(0), xx2 - xx1);
  T h = std::max(static_cast<T>(0), yy2 - yy1);
  T inter = w * h;
  T area_a = (a[2] - a[0]) * (a[3] - a[1]);
  T area_b = (b[2] - b[0]) * (b[3] - b[1]);
  return inter / (area_a + area_b - inter) > threshold;
}

// float / double follow torchvision's CPU kernel; float16 / bfloat16, which only torchvision's
// CUDA kernel accepts, follow that one (so CPU and CUDA agree for them).
template <typename T>
bool iou_exceeds(const T* a, const T* b, double threshold) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return iou_exceeds_cpu_semantics(a, b, threshold);
  } else {
    return iou_exceeds_cuda_semantics(a, b, static_cast<float>(threshold));
  }
}

// Where a box sits for the spatial hash, in double so the bounds hold for every input type.
struct HashedBox {
  double cx, cy;    // centre
  double w, h;      // extent
  double rx, ry;    // a box that can suppress this one has its centre at most this far away
  double area;
  int area_level;   // floor(log2(area))
  bool comparable;  // false: zero, negative or non-finite extent. Its IoU with any box is 0 or
                    // NaN, so it can neither suppress nor be suppressed: it is simply kept.
};

template <typename T>
HashedBox hash_box(const T* c) {
  const double x1 = static_cast<double>(c[0]), y1 = static_cast<double>(c[1]);
  const double x2 = static_cast<double>(c[2]), y2 = static_cast<double>(c[3]);
  HashedBox b;
  b.w = x2 - x1, b.h = y2 - y1, b.area = b.w * b.h;
  b.comparable = b.w > 0 && b.h > 0 && std::isfinite(b.area);
  b.cx = 0.5 * (x1 + x2), b.cy = 0.5 * (y1 + y2);
  b.rx = b.ry = 0;
  b.area_level = b.comparable ? std::ilogb(b.area) : 0;
  return b;
}

// The pruning threshold: the IoU threshold less a 1% margin (see the file comment).
double pruning_threshold(double iou_threshold) { return iou_threshold * 0.99; }

// Fills rx, ry: the larger centre distance, along each axis, at which a box could still
// suppress this one. The centre bound needs t > 0; the overlap bound (half the sum of widths)
// always holds.
void set_search_radii(std::vector<HashedBox>& boxes, double iou_threshold) {
  const double t = pruning_threshold(iou_threshold);
  const double centre_bound = t > 0 ? (1 - t) / (2 * t) : std::numeric_limits<double>::infinity();
  double max_w = 0, max_h = 0;
  for (const auto& b : boxes) {
    if (b.comparable) max_w = std::max(max_w, b.w), max_h = std::max(max_h, b.h);
  }
  for (auto& b : boxes) {
    if (!b.comparable) continue;
    b.rx = std::min(centre_bound * b.w, 0.5 * (b.w + max_w)) * (1 + 1e-6);
    b.ry = std::min(centre_bound * b.h, 0.5 * (b.h + max_h)) * (1 + 1e-6);
  }
}

// The smallest box area for which the pruning bounds hold (see the file comment). The IoU
// test works in double for double boxes, in float for float, float16 and bfloat16 boxes.
template <typename T>
constexpr double kSmallestPrunableArea = std::is_same_v<T, double> ? 0x1p-1000 : 0x1p-100;
constexpr double kSmallestPrunableThreshold = 0x1p-40;

// Kept boxes hashed by (area level, centre cell); each cell is a singly linked list.
template <typename T>
class KeptBoxHash {
 public:
  // `boxes` are all boxes that may be queried or inserted, with their search radii set.
  KeptBoxHash(const std::vector<HashedBox>& boxes, double iou_threshold)
      : area_ratio_(std::max(pruning_threshold(iou_threshold), 0.0)),
        exhaustive_(iou_threshold > 0 && iou_threshold < kSmallestPrunableThreshold) {
    int64_t count = 0;
    double min_cx = INFINITY, min_cy = INFINITY, max_cx = -INFINITY, max_cy = -INFINITY;
    double radius_sum = 0;
    for (const auto& b : boxes) {
      if (!b.comparable) continue;
      exhaustive_ = exhaustive_ || b.area < kSmallestPrunableArea<T>;
      min_level_ = std::min(min_level_, b.area_level), max_level_ = std::max(max_level_, b.area_level);
      min_cx = std::min(min_cx, b.cx), max_cx = std::max(max_cx, b.cx);
      min_cy = std::min(min_cy, b.cy), max_cy = std::max(max_cy, b.cy);
      radius_sum += b.rx + b.ry;
      ++count;
    }
    if (count == 0) return;
    // Cells of a quarter of the mean search radius measured fastest; at most ~2 cells per box.
    const int levels = max_level_ - min_level_ + 1;
    const double span_x = max_cx - min_cx, span_y = max_cy - min_cy;
    const double max_cells = std::max(64.0, 2.0 * count) / levels;
    double cell = std::max(0.25 * radius_sum / count, 1e-300);
    if ((span_x / cell + 1) * (span_y / cell + 1) > max_cells) {
      cell = std::max(cell, std::sqrt(span_x * span_y / max_cells) + (span_x + span_y) / max_cells);
    }
    cells_x_ = std::max(1, static_cast<int>(std::min(std::ceil(span_x / cell), max_cells)));
    cells_y_ = std::max(1, static_cast<int>(std::min(std::ceil(span_y / cell), max_cells)));
    origin_x_ = min_cx, origin_y_ = min_cy;
    inv_cell_x_ = span_x > 0 ? cells_x_ / span_x : 0;
    inv_cell_y_ = span_y > 0 ? cells_y_ / span_y : 0;
    head_.assign(static_cast<size_t>(levels) * cells_x_ * cells_y_, -1);
  }

  // True if a kept box suppresses `box`, whose coordinates are `coords`.
  bool suppressed(const HashedBox& box, const T* coords, double iou_threshold) const {
    const int x0 = cell_x(box.cx - box.rx), x1 = cell_x(box.cx + box.rx);
    const int y0 = cell_y(box.cy - box.ry), y1 = cell_y(box.cy + box.ry);
    int level0 = min_level_, level1 = max_level_;
    if (area_ratio_ > 0) {
      level0 = std::max(level0, std::ilogb(box.area * area_ratio_));
      level1 = std::min(level1, std::ilogb(box.area / area_ratio_));
    }
    // With few kept boxes (heavy suppression, e.g. clusters of near-duplicates) testing them
    // all is cheaper than visiting the cells: take whichever costs less.
    const int64_t cells = static_cast<int64_t>(std::max(0, level1 - level0 + 1)) * (x1 - x0 + 1) * (y1 - y0 + 1);
    if (exhaustive_ || static_cast<int64_t>(next_.size()) <= cells) {
      for (size_t e = 0; e < next_.size(); ++e) {
        if (iou_exceeds(&kept_coords_[4 * e], coords, iou_threshold)) return true;
      }
      return false;
    }
    for (int level = level0; level <= level1; ++level) {
      for (int cy = y0; cy <= y1; ++cy) {
        for (int cx = x0; cx <= x1; ++cx) {
          for (int e = head_[cell_index(level, cx, cy)]; e >= 0; e = next_[e]) {
            if (iou_exceeds(&kept_coords_[4 * static_cast<size_t>(e)], coords, iou_threshold)) {
              return true;
            }
          }
        }
      }
    }
    return false;
  }

  void insert(const HashedBox& box, const T* coords) {
    const size_t cell = cell_index(box.area_level, cell_x(box.cx), cell_y(box.cy));
    kept_coords_.insert(kept_coords_.end(), coords, coords + 4);
    next_.push_back(head_[cell]);
    head_[cell] = static_cast<int>(next_.size()) - 1;
  }

 private:
  int cell_x(double x) const { return clamp_cell((x - origin_x_) * inv_cell_x_, cells_x_); }
  int cell_y(double y) const { return clamp_cell((y - origin_y_) * inv_cell_y_, cells_y_); }
  static int clamp_cell(double v, int cells) {
    const double c = std::floor(v);
    return c <= 0 ? 0 : (c >= cells - 1 ? cells - 1 : static_cast<int>(c));
  }
  size_t cell_index(int level, int cx, int cy) const {
    return (static_cast<size_t>(level - min_level_) * cells_y_ + cy) * cells_x_ + cx;
  }

  double area_ratio_;  // a suppressing box's area lies within (area * r, area / r)
  bool exhaustive_;    // the bounds may not hold: test every kept box
  int min_level_ = std::numeric_limits<int>::max(), max_level_ = std::numeric_limits<int>::min();
  int cells_x_ = 1, cells_y_ = 1;
  double origin_x_ = 0, origin_y_ = 0, inv_cell_x_ = 0, inv_cell_y_ = 0;
  std::vector<int> head_, next_;
  std::vector<T> kept_coords_;
};

// Greedy NMS over boxes[order[0]], boxes[order[1]], ...: keep a box unless a kept box
// overlaps it by IoU > threshold. Returns flags, one per position of `order`.
template <typename T>
std::vector<uint8_t> greedy_nms(const T* boxes, const int64_t* order, int64_t n, double threshold) {
  std::vector<T> sorted(4 * n);
  std::vector<HashedBox> hashed(n);
  for (int64_t k = 0; k < n; ++k) {
    std::copy_n(boxes + 4 * order[k], 4, &sorted[4 * k]);
    hashed[k] = hash_box(&sorted[4 * k]);
  }
  set_search_radii(hashed, threshold);
  KeptBoxHash<T> kept(hashed, threshold);
  std::vector<uint8_t> keep(n, 1);
  for (int64_t k = 0; k < n; ++k) {
    if (!hashed[k].comparable) continue;
    if (kept.suppressed(hashed[k], &sorted[4 * k], threshold)) {
      keep[k] = 0;
    } else {
      kept.insert(hashed[k], &sorted[4 * k]);
    }
  }
  return keep;
}

// Indices order[k] of the positions k whose flag is set, in order.
at::Tensor select_kept(const at::Tensor& order, const std::vector<uint8_t>& keep) {
  const int64_t* order_data = order.data_ptr<int64_t>();
  std::vector<int64_t> kept;
  for (size_t k = 0; k < keep.size(); ++k) {
    if (keep[k]) kept.push_back(order_data[k]);
  }
  return at::tensor(kept, order.options());
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  // The very call torchvision's kernel makes: a stable sort, so equal scores keep input order.
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor boxes_c = boxes.contiguous();
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detlab::nms", [&] {
    result = select_kept(
        order, greedy_nms(boxes_c.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), boxes.size(0),
                          iou_threshold));
  });
  return result;
}

constexpr int64_t kMinBoxesToParallelize = 2048;

// Per-category NMS, equal to torchvision's _batched_nms_vanilla (one nms per category, then
// the kept indices sorted by score) including its tie order, without the per-category Python
// loop. Categories are independent, so they run in parallel. Cost is the sum over categories.
at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_batched_nms_inputs(boxes, scores, idxs);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  // Group box indices by category, ascending within a category (as torch.where gives them).
  const at::Tensor by_category =
      std::get<1>(idxs.to(at::kLong).sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor category_sorted = idxs.to(at::kLong).index_select(0, by_category);
  const int64_t* cat = category_sorted.data_ptr<int64_t>();
  std::vector<int64_t> group_begin{0};
  for (int64_t k = 1; k < n; ++k) {
    if (cat[k] != cat[k - 1]) group_begin.push_back(k);
  }
  group_begin.push_back(n);
  const int64_t groups = static_cast<int64_t>(group_begin.size()) - 1;

  const at::Tensor boxes_c = boxes.contiguous();
  std::vector<uint8_t> keep_mask(n, 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detlab::batched_nms", [&] {
    const scalar_t* box_data = boxes_c.data_ptr<scalar_t>();
    // Categories are independent; a second thread only pays off for enough boxes.
    const int64_t grain = n < kMinBoxesToParallelize ? groups : 1;
    at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const at::Tensor members = by_category.slice(0, group_begin[g], group_begin[g + 1]);
        // As torchvision's nms on this category's boxes: its sort call, on its scores.
        const at::Tensor order =
            members.index_select(0, std::get<1>(scores.index_select(0, members)
                                                   .sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)))
                .contiguous();
        const int64_t* order_data = order.data_ptr<int64_t>();
        const auto keep = greedy_nms(box_data, order_data, order.numel(), iou_threshold);
        for (int64_t k = 0; k < order.numel(); ++k) {
          if (keep[k]) keep_mask[order_data[k]] = 1;
        }
      }
    });
  });

  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    if (keep_mask[i]) kept.push_back(i);
  }
  const at::Tensor kept_t = at::tensor(kept, boxes.options().dtype(at::kLong));
  // torchvision: keep_indices[scores[keep_indices].sort(descending=True)[1]], Python's default
  // (not stable) sort, so the same call here.
  return kept_t.index_select(0, std::get<1>(scores.index_select(0, kept_t).sort(0, true)));
}

}  // namespace

TORCH_LIBRARY_IMPL(detlab, CPU, m) {
  m.impl("nms", TORCH_FN(nms_cpu));
  m.impl("batched_nms", TORCH_FN(batched_nms_cpu));
}

}  // namespace detlab
