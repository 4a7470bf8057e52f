// A COCO results file (a JSON list of {"image_id", "category_id", "bbox": [x, y, w, h], "score", ...}) read
// straight into columns, without a Python object per detection.
//
// Contract: this reader only accepts what it can read exactly as detlab's msgspec decoder
// (detlab/eval/cocojson.py) reads it - JSON numbers for the four fields, ids integral and within int64, keys
// without escapes, each field once - and skips every other field whatever its value. Anything else (malformed
// JSON, a missing field, a numeric string, a bbox that is not 4 numbers, a fractional id, NaN) makes it give up and
// return the byte offset where it stopped; the caller then decodes the file with msgspec, which reads the same
// values in the other accepted spellings and names the entry and field of a real error. So both paths give the
// same columns or the same error, and this one is only the fast path of the common file.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <tuple>
#include <vector>

namespace detlab {
namespace {

// JSON's whitespace (RFC 8259): nothing else separates tokens
bool is_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

const char* skip_spaces(const char* p, const char* end) {
  while (p < end && is_space(*p)) ++p;
  return p;
}

class ResultsParser {
 public:
  ResultsParser(const char* begin, const char* end) : p_(begin), begin_(begin), end_(end) {}

  // true if the whole buffer is a results list this reader accepts; else offset() is where it stopped
  bool parse() {
    skip_space();
    if (!take('[')) return false;
    skip_space();
    if (take(']')) return at_end();
    do {
      skip_space();
      if (!detection()) return false;
      skip_space();
    } while (take(','));
    return take(']') && at_end();
  }

  // A run of entries that starts at ``start`` (a '{'), for the parallel read: with ``next`` set, it must end
  // with the ',' (and spaces) after an entry exactly at ``next``, another chunk's start; with ``next`` null it
  // must end with the list's ']' and the buffer. false: not so (a wrong guess of a start, or a file to read
  // sequentially).
  bool parse_run(const char* start, const char* next) {
    p_ = start;
    while (true) {
      if (!detection()) return false;
      skip_space();
      if (!take(',')) return next == nullptr && take(']') && at_end();
      skip_space();
      if (next != nullptr && p_ >= next) return p_ == next;
    }
  }

  int64_t offset() const { return p_ - begin_; }

  std::vector<int64_t> image_id, category_id;
  std::vector<double> boxes, scores;  // boxes: 4 per detection

 private:
  const char* p_;
  const char* begin_;
  const char* end_;

  bool at_end() {
    skip_space();
    return p_ == end_;
  }

  void skip_space() {
    p_ = skip_spaces(p_, end_);
  }

  bool take(char c) {
    if (p_ < end_ && *p_ == c) {
      ++p_;
      return true;
    }
    return false;
  }

  // one {...} entry; the four fields it needs, each exactly once, in any order
  bool detection() {
    if (!take('{')) return false;
    enum : unsigned { kImage = 1, kCategory = 2, kBox = 4, kScore = 8, kAll = 15 };
    unsigned seen = 0;
    int64_t image = 0, category = 0;
    double box[4], score = 0;
    skip_space();
    if (!take('}')) {
      do {
        skip_space();
        std::string_view key;
        if (!plain_key(key)) return false;
        skip_space();
        if (!take(':')) return false;
        skip_space();
        unsigned field = key == "image_id" ? kImage : key == "category_id" ? kCategory
                       : key == "bbox" ? kBox : key == "score" ? kScore : 0;
        if (field & seen) return false;  // a repeated field: msgspec decides which one counts
        seen |= field;
        bool ok = field == kImage ? integer(image)
                : field == kCategory ? integer(category)
                : field == kBox ? box4(box)
                : field == kScore ? number(score)
                : skip_value(0);
        if (!ok) return false;
        skip_space();
      } while (take(','));
      if (!take('}')) return false;
    }
    if (seen != kAll) return false;
    image_id.push_back(image);
    category_id.push_back(category);
    boxes.insert(boxes.end(), box, box + 4);
    scores.push_back(score);
    return true;
  }

  // a key without escapes (an escaped key could spell a field name another way)
  bool plain_key(std::string_view& key) {
    if (!take('"')) return false;
    const char* start = p_;
    while (p_ < end_ && *p_ != '"') {
      if (*p_ == '\\' || static_cast<unsigned char>(*p_) < 0x20) return false;
      ++p_;
    }
    if (p_ == end_) return false;
    key = std::string_view(start, p_ - start);
    ++p_;
    return true;
  }

  // the extent of a JSON number (RFC 8259 grammar; leading zeros, "+1", ".5", NaN are not numbers)
  bool number_token(const char*& start, bool& integral) {
    start = p_;
    integral = true;
    take('-');
    if (take('0')) {
    } else if (p_ < end_ && *p_ >= '1' && *p_ <= '9') {
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    } else {
      return false;
    }
    if (take('.')) {
      integral = false;
      if (!digits()) return false;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      integral = false;
      ++p_;
      if (!take('+')) take('-');
      if (!digits()) return false;
    }
    return true;
  }

  bool digits() {
    const char* start = p_;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    return p_ > start;
  }

  bool number(double& value) {
    const char* start;
    bool integral;
    if (!number_token(start, integral)) return false;
    // from_chars rounds correctly, as msgspec does, so both give the same double
    auto [end, error] = std::from_chars(start, p_, value);
    return error == std::errc() && end == p_;
  }

  // an id: an integer, or a number with an integral value (7.0, 7e1) within int64
  bool integer(int64_t& value) {
    const char* start;
    bool integral;
    if (!number_token(start, integral)) return false;
    if (integral) {
      auto [end, error] = std::from_chars(start, p_, value);
      return error == std::errc() && end == p_;
    }
    double x;
    auto [end, error] = std::from_chars(start, p_, x);
    // below 2^63 exactly: the largest double under it is integral, and it converts without overflow
    if (error != std::errc() || end != p_ || x != std::floor(x) || !(x >= -9223372036854775808.0 && x < 9223372036854775808.0))
      return false;
    value = static_cast<int64_t>(x);
    return true;
  }

  bool box4(double* box) {
    if (!take('[')) return false;
    for (int i = 0; i < 4; ++i) {
      skip_space();
      if (!number(box[i])) return false;
      skip_space();
      if (!take(i < 3 ? ',' : ']')) return false;
    }
    return true;
  }

  // any JSON value, validated but not kept (segmentations, ids of other tools, ...)
  bool skip_value(int depth) {
    if (p_ == end_ || depth > 64) return false;  // deeper nesting: msgspec decides
    switch (*p_) {
      case '"':
        return skip_string();
      case '{':
      case '[': {
        char close = *p_ == '{' ? '}' : ']';
        bool object = close == '}';
        ++p_;
        skip_space();
        if (take(close)) return true;
        do {
          skip_space();
          if (object) {
            if (!skip_string()) return false;
            skip_space();
            if (!take(':')) return false;
            skip_space();
          }
          if (!skip_value(depth + 1)) return false;
          skip_space();
        } while (take(','));
        return take(close);
      }
      case 't':
        return literal("true");
      case 'f':
        return literal("false");
      case 'n':
        return literal("null");
      default: {
        const char* start;
        bool integral;
        return number_token(start, integral);
      }
    }
  }

  bool skip_string() {
    if (!take('"')) return false;
    while (p_ < end_ && *p_ != '"') {
      unsigned char c = static_cast<unsigned char>(*p_);
      if (c < 0x20) return false;
      if (c == '\\') {
        ++p_;
        if (p_ == end_) return false;
        if (*p_ == 'u') {
          for (int i = 0; i < 4; ++i) {
            ++p_;
            if (p_ == end_ || !std::isxdigit(static_cast<unsigned char>(*p_))) return false;
          }
        } else if (!std::strchr("\"\\/bfnrt", *p_)) {
          return false;
        }
      }
      ++p_;
    }
    return take('"');
  }

  bool literal(const char* word) {
    size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) return false;
    p_ += n;
    return true;
  }
};

// Files this large are read by several threads.
constexpr int64_t kParallelBytes = 1 << 20;

// Where a chunk after the first can start: the first '{' at or after ``from`` that follows ',' and spaces. It is
// only a guess (the bytes could be inside a string or a skipped value); parse_parallel checks it.
const char* entry_start_after(const char* from, const char* end) {
  for (const char* p = from; p < end; ++p) {
    if (*p != '{') continue;
    const char* q = p;
    while (q > from && is_space(q[-1])) --q;
    if (q > from && q[-1] == ',') return p;
  }
  return nullptr;
}

// The parallel read: the list is cut into chunks at guessed entry starts and each chunk parsed on its own. It
// holds only if every chunk ends exactly where the next begins: chunk 0 starts at the true first entry, so by
// induction each chunk then starts at a true entry, and the entries are the sequential parse's, in order. Any
// chunk that does not fit makes the caller parse sequentially (which also finds where a bad file stops).
bool parse_parallel(const char* begin, const char* end, int chunks, ResultsParser& out) {
  const char* first = skip_spaces(begin, end);
  if (first == end || *first != '[') return false;
  first = skip_spaces(first + 1, end);
  if (first == end || *first != '{') return false;
  std::vector<const char*> starts{first};
  int64_t span = (end - first) / chunks;
  for (int k = 1; k < chunks; ++k) {
    const char* guess = entry_start_after(std::max(first + k * span, starts.back() + 1), end);
    if (guess == nullptr) break;
    starts.push_back(guess);
  }
  int n = static_cast<int>(starts.size());
  std::vector<ResultsParser> parts;
  parts.reserve(n);
  for (int k = 0; k < n; ++k) parts.emplace_back(begin, end);
  std::vector<char> ok(n, 0);
  at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) ok[k] = parts[k].parse_run(starts[k], k + 1 < n ? starts[k + 1] : nullptr);
  });
  for (char chunk_ok : ok)
    if (!chunk_ok) return false;
  for (auto& part : parts) {
    out.image_id.insert(out.image_id.end(), part.image_id.begin(), part.image_id.end());
    out.category_id.insert(out.category_id.end(), part.category_id.begin(), part.category_id.end());
    out.boxes.insert(out.boxes.end(), part.boxes.begin(), part.boxes.end());
    out.scores.insert(out.scores.end(), part.scores.begin(), part.scores.end());
  }
  return true;
}

// data: uint8[B], the file's bytes -> (image_id int64[D], category_id int64[D], boxes_xywh float64[D, 4],
// scores float64[D], stopped_at): stopped_at is -1 when the file was read, else the byte offset where this
// reader gave up (the columns are then empty) - see the contract above.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t> read_coco_results(const at::Tensor& data) {
  TORCH_CHECK(data.device().is_cpu() && data.scalar_type() == at::kByte && data.dim() == 1,
              "read_coco_results: data must be a 1-D uint8 CPU tensor, got ", data.scalar_type(), " on ",
              data.device(), " with ", data.dim(), " dimensions");
  at::Tensor bytes = data.contiguous();
  const char* begin = reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>());
  const char* end = begin + bytes.numel();
  ResultsParser parser(begin, end);
  int threads = at::get_num_threads();
  bool ok = bytes.numel() >= kParallelBytes && threads > 1 && parse_parallel(begin, end, threads, parser);
  if (!ok) {
    parser = ResultsParser(begin, end);
    ok = parser.parse();
  }
  auto longs = at::TensorOptions().dtype(at::kLong);
  auto doubles = at::TensorOptions().dtype(at::kDouble);
  int64_t n = ok ? static_cast<int64_t>(parser.scores.size()) : 0;
  at::Tensor image_id = at::empty({n}, longs), category_id = at::empty({n}, longs);
  at::Tensor boxes = at::empty({n, 4}, doubles), scores = at::empty({n}, doubles);
  if (n > 0) {
    std::memcpy(image_id.data_ptr<int64_t>(), parser.image_id.data(), n * sizeof(int64_t));
    std::memcpy(category_id.data_ptr<int64_t>(), parser.category_id.data(), n * sizeof(int64_t));
    std::memcpy(boxes.data_ptr<double>(), parser.boxes.data(), 4 * n * sizeof(double));
    std::memcpy(scores.data_ptr<double>(), parser.scores.data(), n * sizeof(double));
  }
  return {image_id, category_id, boxes, scores, ok ? -1 : parser.offset()};
}

}  // namespace
}  // namespace detlab

TORCH_LIBRARY_FRAGMENT(detlab, m) {
  m.def("_read_coco_results(Tensor data) -> (Tensor, Tensor, Tensor, Tensor, int)");
}

TORCH_LIBRARY_IMPL(detlab, CPU, m) { m.impl("_read_coco_results", &detlab::read_coco_results); }
