// COCO-results JSON decoded straight into columns, a block of the file at a time.
//
// mmens._results_io is a plain CPython module (no torch, no numpy headers): fuse_results
// can load it before torch is imported. decode_block() parses the entries
// {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": number} of a
// JSON list from a caller's buffer into caller-owned int64/float64 columns, without a
// Python object per entry, and with the GIL released. Anything outside that layout (NaN,
// a string, a missing or repeated field, an id beyond int64, invalid or truncated JSON)
// returns FALLBACK: the caller then reads the file with the general decoders, whose
// errors name the first bad entry. Numbers are correctly rounded (std::from_chars), the
// values msgspec and json give.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

// where the caller's list stands between two calls
enum State : int { kStart = 0, kFirst = 1, kEntry = 2, kSep = 3, kDone = 4 };
enum Result : int { kOk = 0, kMore = 1, kBad = 2 };  // kMore: the block ends mid-value

struct Cursor {
  const char* p;
  const char* end;
};

inline bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
inline void skip_ws(Cursor& c) {
  while (c.p < c.end && is_ws(*c.p)) ++c.p;
}

// One JSON number (strict grammar: from_chars alone would take "01" or "1."); on kOk,
// [*begin, c.p) holds it. A number that reaches the end of the block may go on in the
// next one: in a list of objects a number is always followed by a delimiter.
Result scan_number(Cursor& c, const char** begin, bool* is_int) {
  const char* p = c.p;
  const char* e = c.end;
  *begin = p;
  *is_int = true;
  if (p < e && *p == '-') ++p;
  if (p >= e) return kMore;
  if (*p == '0') {
    ++p;
  } else if (*p >= '1' && *p <= '9') {
    while (p < e && is_digit(*p)) ++p;
  } else {
    return kBad;
  }
  if (p < e && *p == '.') {
    *is_int = false;
    const char* d = ++p;
    while (p < e && is_digit(*p)) ++p;
    if (p == d) return p >= e ? kMore : kBad;
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    *is_int = false;
    ++p;
    if (p < e && (*p == '+' || *p == '-')) ++p;
    const char* d = p;
    while (p < e && is_digit(*p)) ++p;
    if (p == d) return p >= e ? kMore : kBad;
  }
  if (p >= e) return kMore;
  c.p = p;
  return kOk;
}

Result parse_double(Cursor& c, double* out) {
  const char* begin;
  bool is_int;
  Result r = scan_number(c, &begin, &is_int);
  if (r != kOk) return r;
  auto res = std::from_chars(begin, c.p, *out);
  // out of range (1e400): the general decoders decide what that is
  return (res.ec == std::errc() && res.ptr == c.p) ? kOk : kBad;
}

Result parse_int(Cursor& c, int64_t* out) {
  const char* begin;
  bool is_int;
  Result r = scan_number(c, &begin, &is_int);
  if (r != kOk) return r;
  if (!is_int) return kBad;  // 1.0 or 1e3 as an id: the general path
  auto res = std::from_chars(begin, c.p, *out);
  return (res.ec == std::errc() && res.ptr == c.p) ? kOk : kBad;
}

// A string; [*begin, *stop) is its raw content, *escaped whether it holds a backslash.
Result scan_string(Cursor& c, const char** begin, const char** stop, bool* escaped) {
  if (c.p >= c.end) return kMore;
  if (*c.p != '"') return kBad;
  const char* p = c.p + 1;
  *begin = p;
  *escaped = false;
  while (p < c.end) {
    const unsigned char ch = static_cast<unsigned char>(*p);
    if (ch == '"') {
      *stop = p;
      c.p = p + 1;
      return kOk;
    }
    if (ch < 0x20) return kBad;
    if (ch == '\\') {
      *escaped = true;
      ++p;  // the escaped character (a \uXXXX's digits are plain characters)
    }
    ++p;
  }
  return kMore;
}

Result skip_value(Cursor& c, int depth);

Result skip_literal(Cursor& c, const char* word) {
  const size_t n = std::strlen(word);
  const size_t left = static_cast<size_t>(c.end - c.p);
  if (std::memcmp(c.p, word, left < n ? left : n) != 0) return kBad;
  if (left < n) return kMore;
  c.p += n;
  return kOk;
}

// ws, then `close` (returns kOk with *closed) or `,` (kOk, not closed)
Result next_item(Cursor& c, char close, bool* closed) {
  skip_ws(c);
  if (c.p >= c.end) return kMore;
  if (*c.p == ',' || *c.p == close) {
    *closed = *c.p == close;
    ++c.p;
    return kOk;
  }
  return kBad;
}

Result skip_container(Cursor& c, int depth, bool object) {
  const char close = object ? '}' : ']';
  ++c.p;
  skip_ws(c);
  if (c.p >= c.end) return kMore;
  if (*c.p == close) {
    ++c.p;
    return kOk;
  }
  for (bool closed = false; !closed;) {
    Result r;
    skip_ws(c);
    if (object) {
      const char *b, *s;
      bool esc;
      if ((r = scan_string(c, &b, &s, &esc)) != kOk) return r;
      skip_ws(c);
      if (c.p >= c.end) return kMore;
      if (*c.p++ != ':') return kBad;
      skip_ws(c);
    }
    if ((r = skip_value(c, depth + 1)) != kOk) return r;
    if ((r = next_item(c, close, &closed)) != kOk) return r;
  }
  return kOk;
}

// Any JSON value (a field that mmens does not read).
Result skip_value(Cursor& c, int depth) {
  if (depth > 64) return kBad;  // deeper than any results file: the general path
  if (c.p >= c.end) return kMore;
  switch (*c.p) {
    case '{': return skip_container(c, depth, true);
    case '[': return skip_container(c, depth, false);
    case '"': {
      const char *b, *s;
      bool esc;
      return scan_string(c, &b, &s, &esc);
    }
    case 't': return skip_literal(c, "true");
    case 'f': return skip_literal(c, "false");
    case 'n': return skip_literal(c, "null");
    default: {
      const char* b;
      bool is_int;
      return scan_number(c, &b, &is_int);
    }
  }
}

struct Row {
  int64_t image_id, category_id;
  double bbox[4], score;
  bool mask;  // a "segmentation" field (skipped here: fuse_results reads masks elsewhere)
};

Result parse_bbox(Cursor& c, double* bbox) {
  if (c.p >= c.end) return kMore;
  if (*c.p++ != '[') return kBad;
  for (int k = 0; k < 4; ++k) {
    skip_ws(c);
    Result r = parse_double(c, &bbox[k]);
    if (r != kOk) return r;
    bool closed;
    if ((r = next_item(c, ']', &closed)) != kOk) return r;
    if (closed != (k == 3)) return kBad;  // not 4 numbers
  }
  return kOk;
}

inline bool key_is(const char* b, const char* s, const char* key) {
  const size_t n = std::strlen(key);
  return static_cast<size_t>(s - b) == n && std::memcmp(b, key, n) == 0;
}

// One entry object; every field exactly once, the others skipped.
Result parse_entry(Cursor& c, Row* row) {
  if (*c.p++ != '{') return kBad;
  unsigned seen = 0;
  for (bool closed = false; !closed;) {
    skip_ws(c);
    const char *b, *s;
    bool esc;
    Result r = scan_string(c, &b, &s, &esc);
    if (r != kOk) return r;
    if (esc) return kBad;  // an escaped key may still name a field: the general path
    skip_ws(c);
    if (c.p >= c.end) return kMore;
    if (*c.p++ != ':') return kBad;
    skip_ws(c);
    unsigned bit = 0;
    if (key_is(b, s, "image_id")) {
      bit = 1, r = parse_int(c, &row->image_id);
    } else if (key_is(b, s, "category_id")) {
      bit = 2, r = parse_int(c, &row->category_id);
    } else if (key_is(b, s, "bbox")) {
      bit = 4, r = parse_bbox(c, row->bbox);
    } else if (key_is(b, s, "score")) {
      bit = 8, r = parse_double(c, &row->score);
    } else {
      row->mask |= key_is(b, s, "segmentation");
      r = skip_value(c, 1);
    }
    if (r != kOk) return r;
    if (seen & bit) return kBad;  // a repeated field
    seen |= bit;
    if ((r = next_item(c, '}', &closed)) != kOk) return r;
  }
  return seen == 15 ? kOk : kBad;
}

struct Columns {
  int64_t* image_ids;
  int64_t* category_ids;
  double* bboxes;
  double* scores;
  Py_ssize_t capacity;
};

// Parses from c.p; returns kBad, or kOk with *n entries written and *state, *consumed
// (c.p of the last whole token: the caller keeps the bytes from there for the next block).
Result decode(Cursor c, Columns out, int* state, Py_ssize_t* n, const char** consumed,
              bool* masks) {
  *n = 0;
  *consumed = c.p;
  for (;;) {
    skip_ws(c);
    if (c.p >= c.end) return kOk;
    if (*state == kStart) {
      if (*c.p != '[') return kBad;
      ++c.p, *state = kFirst;
    } else if (*state == kSep || (*state == kFirst && *c.p == ']')) {
      if (*c.p != ',' && *c.p != ']') return kBad;
      *state = *c.p == ',' ? kEntry : kDone;
      ++c.p;
    } else if (*state == kDone) {
      return kBad;  // something after the list
    } else {  // kFirst, kEntry: an entry
      if (*n == out.capacity) return kOk;
      Row row;
      row.mask = false;
      Result r = parse_entry(c, &row);
      if (r == kMore) return kOk;  // the entry goes on in the next block
      if (r != kOk) return kBad;
      const Py_ssize_t i = (*n)++;
      out.image_ids[i] = row.image_id;
      out.category_ids[i] = row.category_id;
      std::memcpy(out.bboxes + 4 * i, row.bbox, sizeof(row.bbox));
      out.scores[i] = row.score;
      *masks |= row.mask;
      *state = kSep;
    }
    *consumed = c.p;
  }
}

bool writable(Py_buffer* b, Py_ssize_t itemsize, Py_ssize_t per, Py_ssize_t* cap,
              const char* name) {
  if (b->len % (itemsize * per) != 0) {
    PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of rows", name,
                 b->len);
    return false;
  }
  const Py_ssize_t rows = b->len / (itemsize * per);
  *cap = (*cap < 0 || rows < *cap) ? rows : *cap;
  return true;
}

PyObject* decode_block(PyObject*, PyObject* args) {
  Py_buffer buf, ids, cats, boxes, scores;
  Py_ssize_t start, stop;
  int state;
  if (!PyArg_ParseTuple(args, "y*nnw*w*w*w*i:decode_block", &buf, &start, &stop, &ids,
                        &cats, &boxes, &scores, &state))
    return nullptr;
  PyObject* result = nullptr;
  Py_ssize_t cap = -1;
  if (start < 0 || stop < start || stop > buf.len || state < kStart || state > kDone) {
    PyErr_SetString(PyExc_ValueError, "decode_block: start/stop/state out of range");
  } else if (writable(&ids, 8, 1, &cap, "image_ids") &&
             writable(&cats, 8, 1, &cap, "category_ids") &&
             writable(&boxes, 8, 4, &cap, "bboxes") &&
             writable(&scores, 8, 1, &cap, "scores")) {
    const char* base = static_cast<const char*>(buf.buf);
    Columns out{static_cast<int64_t*>(ids.buf), static_cast<int64_t*>(cats.buf),
                static_cast<double*>(boxes.buf), static_cast<double*>(scores.buf), cap};
    Py_ssize_t n = 0;
    const char* consumed = base + start;
    Result r;
    bool masks = false;
    Py_BEGIN_ALLOW_THREADS
    r = decode(Cursor{base + start, base + stop}, out, &state, &n, &consumed, &masks);
    Py_END_ALLOW_THREADS
    if (r == kBad) {
      result = Py_BuildValue("(OnniO)", Py_False, (Py_ssize_t)0, (Py_ssize_t)0, state,
                             Py_False);
    } else {
      result = Py_BuildValue("(OnniO)", Py_True, n, (Py_ssize_t)(consumed - base), state,
                             masks ? Py_True : Py_False);
    }
  }
  PyBuffer_Release(&buf);
  PyBuffer_Release(&ids);
  PyBuffer_Release(&cats);
  PyBuffer_Release(&boxes);
  PyBuffer_Release(&scores);
  return result;
}

// The valid case of ColumnValidator.add in one pass: every entry known, finite, in range
// and of positive size once clipped to its image; written compact (int32 image and
// category positions, float32 x1 y1 x2 y2 clipped, float32 score). Returns false at the
// first entry that is not: the caller then runs the general checks (their errors, counts
// and repairs) on the block. The arithmetic is numpy's: float64, then rounded to float32.
bool compact(Py_ssize_t n, const int64_t* ids, const int64_t* cats, const double* xywh,
             const double* scores, Py_ssize_t n_known, const int64_t* known,
             const double* sizes, Py_ssize_t n_cats, const int64_t* known_cats,
             int32_t* out_img, int32_t* out_cat, float* out_box, float* out_score,
             Py_ssize_t* n_clipped) {
  Py_ssize_t img = -1, cat = -1, clipped = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (img < 0 || known[img] != ids[i]) {  // entries come grouped by image: search rarely
      const int64_t* it = std::lower_bound(known, known + n_known, ids[i]);
      if (it == known + n_known || *it != ids[i]) return false;
      img = it - known;
    }
    if (cat < 0 || known_cats[cat] != cats[i]) {
      const int64_t* it = std::lower_bound(known_cats, known_cats + n_cats, cats[i]);
      if (it == known_cats + n_cats || *it != cats[i]) return false;
      cat = it - known_cats;
    }
    const double* b = xywh + 4 * i;
    const double s = scores[i];
    if (!(std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) &&
          std::isfinite(b[3]) && std::isfinite(s)) ||
        b[2] < 0 || b[3] < 0 || s < 0 || s > 1)
      return false;
    const double xyxy[4] = {b[0], b[1], b[0] + b[2], b[1] + b[3]};
    const double hi[4] = {sizes[2 * img], sizes[2 * img + 1], sizes[2 * img],
                          sizes[2 * img + 1]};
    double c[4];
    bool moved = false;
    for (int k = 0; k < 4; ++k) {  // np.clip(x, 0, hi) exactly (-0.0 becomes 0.0)
      const double lo = xyxy[k] > 0.0 ? xyxy[k] : 0.0;
      c[k] = lo < hi[k] ? lo : hi[k];
      moved |= std::fabs(c[k] - xyxy[k]) > 1e-6;
    }
    if (c[2] <= c[0] || c[3] <= c[1]) return false;
    clipped += moved;
    out_img[i] = static_cast<int32_t>(img);
    out_cat[i] = static_cast<int32_t>(cat);
    for (int k = 0; k < 4; ++k) out_box[4 * i + k] = static_cast<float>(c[k]);
    out_score[i] = static_cast<float>(s);
  }
  *n_clipped = clipped;
  return true;
}

PyObject* compact_block(PyObject*, PyObject* args) {
  Py_buffer in[7], out[4];
  if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*w*w*w*:compact_block", &in[0], &in[1], &in[2],
                        &in[3], &in[4], &in[5], &in[6], &out[0], &out[1], &out[2], &out[3]))
    return nullptr;
  const Py_ssize_t n = in[3].len / 8;
  PyObject* result = nullptr;
  if (in[0].len != 8 * n || in[1].len != 8 * n || in[2].len != 32 * n ||
      in[5].len != 2 * in[4].len || out[0].len != 4 * n || out[1].len != 4 * n ||
      out[2].len != 16 * n || out[3].len != 4 * n) {
    PyErr_SetString(PyExc_ValueError, "compact_block: column lengths disagree");
  } else {
    bool ok;
    Py_ssize_t clipped = 0;
    Py_BEGIN_ALLOW_THREADS
    ok = compact(n, static_cast<const int64_t*>(in[0].buf),
                 static_cast<const int64_t*>(in[1].buf), static_cast<const double*>(in[2].buf),
                 static_cast<const double*>(in[3].buf), in[4].len / 8,
                 static_cast<const int64_t*>(in[4].buf), static_cast<const double*>(in[5].buf),
                 in[6].len / 8, static_cast<const int64_t*>(in[6].buf),
                 static_cast<int32_t*>(out[0].buf), static_cast<int32_t*>(out[1].buf),
                 static_cast<float*>(out[2].buf), static_cast<float*>(out[3].buf), &clipped);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(On)", ok ? Py_True : Py_False, clipped);
  }
  for (auto& b : in) PyBuffer_Release(&b);
  for (auto& b : out) PyBuffer_Release(&b);
  return result;
}

// --- writing: format_results -------------------------------------------------------------
// The text of COCO-results entries, as coco_results._results_chunk writes it with orjson:
// integers in decimal; a float64 as the shortest digits that read back as the same value
// (std::to_chars, the digits of orjson's ryu), laid out as orjson does: fixed notation
// when the decimal point falls within 16 digits of the first one and the value is at
// least 1e-5 ("100.0", "0.00001"), else scientific ("1e-6", "1.5e+300"); non-finite:
// null. tests/test_datasets/test_results_text.py compares the two on edge cases.

// the largest text of one entry: 2 int64 (20 chars each), 5 doubles (at most 24 chars:
// "-1.2345678901234567e-308") and the keys
constexpr Py_ssize_t kEntryMax = 2 * 20 + 5 * 24 + 64;

// Fixed notation of 1e-4 <= |v| < 1e15 with at most 9 decimals, when its digits are
// certainly the shortest: the fewest decimals d at which round(|v| * 10^d) / 10^d reads
// back as |v| (exact: an integer below 2^53 over an exact power of ten is the correctly
// rounded parse of its text), trying both neighbours of the scaled value, and no other
// d-decimal text reading back as |v| (else the closest one is std::to_chars' to find).
// Returns nullptr when it cannot tell: the caller formats the general way.
char* write_fixed(char* out, double v) {
  static constexpr double kPow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
  const double a = std::fabs(v);
  if (!(a >= 1e-4 && a < 1e15)) return nullptr;
  for (int d = 0; d <= 9; ++d) {
    const double scaled = a * kPow10[d];
    if (scaled >= 9007199254740992.0) return nullptr;  // 2^53
    const double lo = std::floor(scaled);
    const bool lo_ok = lo / kPow10[d] == a, hi_ok = (lo + 1) / kPow10[d] == a;
    if (!lo_ok && !hi_ok) continue;
    if ((lo_ok && hi_ok) || (lo - 1) / kPow10[d] == a || (lo + 2) / kPow10[d] == a)
      return nullptr;  // two texts of d decimals read back as v: the closest is wanted
    const auto r = static_cast<int64_t>(lo_ok ? lo : lo + 1);
    if (v < 0) *out++ = '-';
    char digits[24];
    const int n = static_cast<int>(std::to_chars(digits, digits + 24, r).ptr - digits);
    if (n > d) {  // 12.34: the integer part, then the decimals (d == 0: ".0")
      std::memcpy(out, digits, n - d);
      out += n - d;
      *out++ = '.';
      if (d == 0) {
        *out++ = '0';
      } else {
        std::memcpy(out, digits + n - d, d);
        out += d;
      }
    } else {  // 0.001234
      *out++ = '0';
      *out++ = '.';
      for (int i = n; i < d; ++i) *out++ = '0';
      std::memcpy(out, digits, n);
      out += n;
    }
    return out;
  }
  return nullptr;
}

char* write_double(char* out, double v) {
  if (!std::isfinite(v)) {
    std::memcpy(out, "null", 4);
    return out + 4;
  }
  if (char* end = write_fixed(out, v)) return end;
  char sci[40];
  const auto res = std::to_chars(sci, sci + sizeof(sci), v, std::chars_format::scientific);
  const char* p = sci;
  if (*p == '-') *out++ = *p++;
  char digits[20];  // the significant digits, without the point
  int n = 0;
  for (; p < res.ptr && *p != 'e'; ++p)
    if (*p != '.') digits[n++] = *p;
  int e10 = 0;  // the exponent after 'e' (sign, then digits): value = d1.d2d3... * 10^e10
  std::from_chars(p + 1 + (p[1] == '+'), res.ptr, e10);
  const int kk = e10 + 1;            // digits before the decimal point
  if (n <= kk && kk <= 16) {         // 1234e7 -> 12340000000.0
    std::memcpy(out, digits, n);
    out += n;
    for (int i = n; i < kk; ++i) *out++ = '0';
    std::memcpy(out, ".0", 2);
    return out + 2;
  }
  if (0 < kk && kk <= 16) {  // 1234e-2 -> 12.34
    std::memcpy(out, digits, kk);
    out += kk;
    *out++ = '.';
    std::memcpy(out, digits + kk, n - kk);
    return out + (n - kk);
  }
  if (-5 < kk && kk <= 0) {  // 1234e-6 -> 0.001234
    *out++ = '0';
    *out++ = '.';
    for (int i = kk; i < 0; ++i) *out++ = '0';
    std::memcpy(out, digits, n);
    return out + n;
  }
  *out++ = digits[0];  // 1e30, 1.234e33, 1e-7
  if (n > 1) {
    *out++ = '.';
    std::memcpy(out, digits + 1, n - 1);
    out += n - 1;
  }
  *out++ = 'e';
  if (e10 >= 0) *out++ = '+';
  return std::to_chars(out, out + 8, e10).ptr;
}

template <size_t N>
inline char* put(char* out, const char (&text)[N]) {
  std::memcpy(out, text, N - 1);
  return out + N - 1;
}

char* write_entries(char* out, Py_ssize_t n, const int64_t* ids, const int64_t* cats,
                    const double* xywh, const double* scores) {
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (i) *out++ = ',';
    out = put(out, "{\"image_id\":");
    out = std::to_chars(out, out + 20, ids[i]).ptr;
    out = put(out, ",\"category_id\":");
    out = std::to_chars(out, out + 20, cats[i]).ptr;
    out = put(out, ",\"bbox\":[");
    for (int k = 0; k < 4; ++k) {
      if (k) *out++ = ',';
      out = write_double(out, xywh[4 * i + k]);
    }
    out = put(out, "],\"score\":");
    out = write_double(out, scores[i]);
    *out++ = '}';
  }
  return out;
}

PyObject* format_results(PyObject*, PyObject* args) {
  Py_buffer in[4];
  if (!PyArg_ParseTuple(args, "y*y*y*y*:format_results", &in[0], &in[1], &in[2], &in[3]))
    return nullptr;
  const Py_ssize_t n = in[3].len / 8;
  PyObject* result = nullptr;
  if (in[0].len != 8 * n || in[1].len != 8 * n || in[2].len != 32 * n ||
      in[3].len != 8 * n) {
    PyErr_SetString(PyExc_ValueError, "format_results: column lengths disagree");
  } else if ((result = PyBytes_FromStringAndSize(nullptr, n * kEntryMax)) != nullptr) {
    char* begin = PyBytes_AS_STRING(result);  // not shared yet: filled without the GIL
    char* end;
    Py_BEGIN_ALLOW_THREADS
    end = write_entries(begin, n, static_cast<const int64_t*>(in[0].buf),
                        static_cast<const int64_t*>(in[1].buf),
                        static_cast<const double*>(in[2].buf),
                        static_cast<const double*>(in[3].buf));
    Py_END_ALLOW_THREADS
    _PyBytes_Resize(&result, end - begin);  // on failure: result NULL, error set
  }
  for (auto& b : in) PyBuffer_Release(&b);
  return result;
}

PyMethodDef kMethods[] = {
    {"compact_block", compact_block, METH_VARARGS,
     "compact_block(image_ids, category_ids, bboxes, scores, known_ids, sizes, known_cats,\n"
     "out_images, out_categories, out_bboxes, out_scores) -> (ok, n_clipped): the valid\n"
     "case of ColumnValidator.add in one pass (ok False: a check fails somewhere)."},
    {"decode_block", decode_block, METH_VARARGS,
     "decode_block(buf, start, stop, image_ids, category_ids, bboxes, scores, state)\n"
     "-> (ok, n, consumed, state, masks): the entries of buf[start:stop] written into\n"
     "the int64 / int64 / float64 [.., 4] / float64 columns (up to their length);\n"
     "consumed is where the next call starts (an entry cut by the block's end is left\n"
     "there); masks: whether an entry had a \"segmentation\" field.\n"
     "ok False: not the plain COCO-results layout (read the file another way)."},
    {"format_results", format_results, METH_VARARGS,
     "format_results(image_ids, category_ids, bboxes, scores) -> bytes: the entries\n"
     "{\"image_id\":..,\"category_id\":..,\"bbox\":[x,y,w,h],\"score\":..} of int64 /\n"
     "int64 / float64 [.., 4] / float64 columns, comma-separated, as orjson writes them."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_results_io",
                       "COCO-results JSON decoded into columns and written from them "
                       "(no torch).",
                       -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__results_io(void) { return PyModule_Create(&kModule); }
