// CUDA kernels of detlab::nms and detlab::batched_nms.
//
// Same kept indices, in the same order, as torchvision's CUDA kernels: the same stable score
// sort, the same IoU expression (box_iou.h), the same 64-bit suppression mask. What changes is
// what happens after the mask:
//   * torchvision copies the whole N x N/64 mask to the host and scans it there (an N^2 / 8
//     byte device-to-host copy and a host loop); here one thread block scans it on the device
//     and the host reads back only the number of kept boxes;
//   * batched_nms works per category "segment" (boxes sorted by category, then by score): only
//     the mask tiles inside a segment are computed and stored, one block scans each segment,
//     and segments run concurrently. Cost and memory are the sum over categories, not
//     (sum of boxes)^2 as with torchvision's coordinate-offset trick.
//
// Mask layout, per segment of n boxes in visiting order: row i holds ceil(n/64) words; bit b
// of word j is set when IoU(box i, box 64*j + b) > threshold. Only words j >= i/64 are written
// (and read): a box can only suppress boxes it is visited before.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "box_iou.h"
#include "nms_checks.h"

namespace detlab {
namespace {

constexpr int kBoxesPerWord = 64;
constexpr int kScanThreads = 256;

// Where each segment's boxes and mask live. Either a device table of kFields x num entries
// (batched_nms), or a single segment of `single_count` boxes (nms, no table to upload).
struct SegmentTable {
  enum Field { kBegin = 0, kCount, kWords, kMaskOffset, kTileOffset, kFields };
  const int64_t* table;  // [kFields, num] on the device, or nullptr for a single segment
  int64_t num;
  int64_t single_count;

  __device__ int64_t get(Field field, int64_t s) const {
    if (table != nullptr) return table[field * num + s];
    const int64_t words = (single_count + kBoxesPerWord - 1) / kBoxesPerWord;
    switch (field) {
      case kBegin: return 0;
      case kCount: return single_count;
      case kWords: return words;
      default: return 0;  // mask and tile offsets of the only segment
    }
  }

  // The segment that owns mask tile `tile` (tiles are numbered segment after segment).
  __device__ int64_t segment_of_tile(int64_t tile) const {
    if (table == nullptr) return 0;
    int64_t low = 0, high = num - 1;
    while (low < high) {
      const int64_t mid = (low + high + 1) / 2;
      if (get(kTileOffset, mid) <= tile) low = mid; else high = mid - 1;
    }
    return low;
  }
};

// One block per 64 x 64 tile of one segment's mask; thread i computes row i of the tile.
// Boxes are read through `order` (visiting position -> box index), so no sorted copy is made.
template <typename T>
__global__ void suppression_mask_kernel(const T* boxes, const int64_t* order, SegmentTable segments,
                                        double iou_threshold, uint64_t* mask) {
  const int64_t tile = blockIdx.x;
  const int64_t s = segments.segment_of_tile(tile);
  const int64_t words = segments.get(SegmentTable::kWords, s);
  const int64_t local = tile - segments.get(SegmentTable::kTileOffset, s);
  const int64_t row_word = local / words, col_word = local % words;
  if (col_word < row_word) return;  // lower triangle: never read

  const int64_t begin = segments.get(SegmentTable::kBegin, s);
  const int64_t count = segments.get(SegmentTable::kCount, s);
  const int rows = static_cast<int>(min_of<int64_t>(count - row_word * kBoxesPerWord, kBoxesPerWord));
  const int cols = static_cast<int>(min_of<int64_t>(count - col_word * kBoxesPerWord, kBoxesPerWord));

  __shared__ T col_boxes[kBoxesPerWord * 4];
  if (threadIdx.x < cols) {
    const T* box = boxes + 4 * order[begin + col_word * kBoxesPerWord + threadIdx.x];
    for (int d = 0; d < 4; ++d) col_boxes[threadIdx.x * 4 + d] = box[d];
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;

  const int64_t row = row_word * kBoxesPerWord + threadIdx.x;
  T row_box[4];
  const T* box = boxes + 4 * order[begin + row];
  for (int d = 0; d < 4; ++d) row_box[d] = box[d];
  uint64_t bits = 0;
  const int first = row_word == col_word ? threadIdx.x + 1 : 0;
  const float threshold = static_cast<float>(iou_threshold);  // torchvision passes a float
  for (int j = first; j < cols; ++j) {
    if (iou_exceeds_cuda_semantics(row_box, col_boxes + j * 4, threshold)) bits |= 1ULL << j;
  }
  mask[segments.get(SegmentTable::kMaskOffset, s) + row * words + col_word] = bits;
}

// One block per segment walks its boxes in visiting order, 64 at a time: warp 0 settles which
// of the 64 are kept (a sequential decision, made by one thread from the 64 diagonal words),
// then all threads OR the kept boxes' rows into the later words of `removed`.
// Writes, for each kept box, either keep_by_index[box index] = true, or (single segment) the
// box index at kept_out[position among kept] and the number kept at *kept_count.
__global__ void scan_mask_kernel(const uint64_t* mask, const int64_t* order, SegmentTable segments,
                                 const int64_t* removed_offset, uint64_t* removed_all,
                                 bool* keep_by_index, int64_t* kept_out, int64_t* kept_count) {
  const int64_t s = blockIdx.x;
  const int64_t begin = segments.get(SegmentTable::kBegin, s);
  const int64_t count = segments.get(SegmentTable::kCount, s);
  const int64_t words = segments.get(SegmentTable::kWords, s);
  const uint64_t* seg_mask = mask + segments.get(SegmentTable::kMaskOffset, s);
  uint64_t* removed = removed_all + (removed_offset ? removed_offset[s] : 0);

  __shared__ uint64_t diagonal[kBoxesPerWord];
  __shared__ uint64_t kept_word;
  __shared__ int64_t kept_before;  // boxes of this segment kept in earlier words
  if (threadIdx.x == 0) kept_before = 0;
  for (int64_t w = 0; w < words; ++w) {
    const int rows = static_cast<int>(min_of<int64_t>(count - w * kBoxesPerWord, kBoxesPerWord));
    if (threadIdx.x < rows) diagonal[threadIdx.x] = seg_mask[(w * kBoxesPerWord + threadIdx.x) * words + w];
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t removed_here = removed[w], kept = 0;
      for (int i = 0; i < rows; ++i) {
        if (!((removed_here >> i) & 1ULL)) {
          kept |= 1ULL << i;
          removed_here |= diagonal[i];
        }
      }
      kept_word = kept;
    }
    __syncthreads();
    const uint64_t kept = kept_word;
    for (int64_t j = w + 1 + threadIdx.x; j < words; j += blockDim.x) {
      uint64_t acc = removed[j];
      for (uint64_t bits = kept; bits != 0; bits &= bits - 1) {
        const int i = __ffsll(static_cast<long long>(bits)) - 1;
        acc |= seg_mask[(w * kBoxesPerWord + i) * words + j];
      }
      removed[j] = acc;
    }
    if (threadIdx.x < rows && ((kept >> threadIdx.x) & 1ULL)) {
      const int64_t index = order[begin + w * kBoxesPerWord + threadIdx.x];
      if (keep_by_index != nullptr) keep_by_index[index] = true;
      if (kept_out != nullptr) {
        const uint64_t lower = threadIdx.x == 0 ? 0ULL : kept & (~0ULL >> (64 - threadIdx.x));
        kept_out[kept_before + __popcll(lower)] = index;
      }
    }
    __syncthreads();  // everyone has read kept_before and removed[] before they change
    if (threadIdx.x == 0) kept_before += __popcll(kept);
  }
  if (threadIdx.x == 0 && kept_count != nullptr) *kept_count = kept_before;
}

int64_t words_for(int64_t count) { return (count + kBoxesPerWord - 1) / kBoxesPerWord; }

// Fills the suppression mask of every segment. `order` lists box indices in visiting order.
void compute_mask(const at::Tensor& boxes, const at::Tensor& order, const SegmentTable& segments,
                  int64_t total_tiles, double iou_threshold, at::Tensor& mask) {
  if (total_tiles == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "detlab::nms_mask", [&] {
    suppression_mask_kernel<scalar_t><<<total_tiles, kBoxesPerWord, 0, stream>>>(
        boxes.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), segments, iou_threshold,
        reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor boxes_c = boxes.contiguous();
  const int64_t words = words_for(n);
  TORCH_CHECK_VALUE(words * words <= std::numeric_limits<int32_t>::max(),
                    "nms on the GPU supports up to 2.9 million boxes, got ", n);
  const SegmentTable single{nullptr, 1, n};
  // O(N^2 / 64) words, as torchvision's mask; nothing of that size ever leaves the device.
  at::Tensor mask = at::empty({n * words}, boxes.options().dtype(at::kLong));
  compute_mask(boxes_c, order, single, words * words, iou_threshold, mask);

  at::Tensor removed = at::zeros({words}, mask.options());
  at::Tensor kept = at::empty({n}, mask.options());
  at::Tensor kept_count = at::empty({1}, mask.options());
  scan_mask_kernel<<<1, kScanThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), order.data_ptr<int64_t>(), single,
      nullptr, reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>()), nullptr,
      kept.data_ptr<int64_t>(), kept_count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return kept.slice(0, 0, kept_count.item<int64_t>());  // the one host sync
}

// Per category, equal to torchvision's _batched_nms_vanilla: one nms per category (stable
// score order within it), kept indices gathered in ascending index order, then sorted by
// score with Python's default (not stable) sort.
at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_batched_nms_inputs(boxes, scores, idxs);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  // Visiting order: by category, then by score (stable), then by index, as per-category nms.
  at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto [categories, by_category] =
      idxs.to(at::kLong).index_select(0, order).sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  order = order.index_select(0, by_category).contiguous();
  const at::Tensor counts_cpu =
      std::get<2>(at::unique_consecutive(categories, /*return_inverse=*/false, /*return_counts=*/true))
          .to(at::kCPU);

  // The segment table, built on the host from the per-category counts.
  const int64_t num = counts_cpu.size(0);
  at::Tensor table_cpu = at::empty({SegmentTable::kFields + 1, num}, counts_cpu.options());
  auto table = table_cpu.accessor<int64_t, 2>();
  const int64_t* counts = counts_cpu.data_ptr<int64_t>();
  int64_t boxes_before = 0, mask_words = 0, tiles = 0, words_before = 0;
  for (int64_t s = 0; s < num; ++s) {
    const int64_t words = words_for(counts[s]);
    table[SegmentTable::kBegin][s] = boxes_before;
    table[SegmentTable::kCount][s] = counts[s];
    table[SegmentTable::kWords][s] = words;
    table[SegmentTable::kMaskOffset][s] = mask_words;
    table[SegmentTable::kTileOffset][s] = tiles;
    table[SegmentTable::kFields][s] = words_before;  // offset of the segment's `removed` words
    boxes_before += counts[s];
    mask_words += counts[s] * words;
    tiles += words * words;
    words_before += words;
  }
  TORCH_CHECK_VALUE(tiles <= std::numeric_limits<int32_t>::max(),
                    "batched_nms on the GPU supports up to 2.9 million boxes per category");
  const at::Tensor table_dev = table_cpu.to(boxes.device());
  const SegmentTable segments{table_dev.data_ptr<int64_t>(), num, 0};

  at::Tensor mask = at::empty({mask_words}, boxes.options().dtype(at::kLong));
  compute_mask(boxes.contiguous(), order, segments, tiles, iou_threshold, mask);
  at::Tensor removed = at::zeros({words_before}, mask.options());
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  scan_mask_kernel<<<num, kScanThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), order.data_ptr<int64_t>(), segments,
      table_dev.data_ptr<int64_t>() + SegmentTable::kFields * num,
      reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>()), keep.data_ptr<bool>(), nullptr, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor kept = at::nonzero(keep).squeeze(1);
  return kept.index_select(0, std::get<1>(scores.index_select(0, kept).sort(0, /*descending=*/true)));
}

}  // namespace

TORCH_LIBRARY_IMPL(detlab, CUDA, m) {
  m.impl("nms", TORCH_FN(nms_cuda));
  m.impl("batched_nms", TORCH_FN(batched_nms_cuda));
}

}  // namespace detlab
