// The list API's packer (mmens/ops/listapi.py::pack_images): the per-image,
// per-member Python lists of ensemble-boxes' API packed into the flat tensors
// the fusion ops take, one pass per field, checked and repaired as they are
// packed.
//
// It reads what most callers pass: exact lists / tuples of NumPy arrays
// (float64, float32, int64 or int32, any strides, native byte order) or of
// plain Python lists of floats / ints. On anything else -- a tensor, another
// dtype, a sequence type, a wrong shape, a value the input contract refuses
// (mmens/ops/validation.py) -- it returns None without raising, and the
// Python packer runs instead and raises the contract's one-line error. So
// every message stays the Python one, and a mistake never reaches C++ code
// that could crash: the C API is only used on objects whose type was checked
// first. It holds the GIL (it reads Python objects).
//
// The repair of validation.py::repair_boxes is done here too: coordinates
// outside [0, 1] clipped, boxes of zero area (after clipping) flagged, with
// per-member counts for its warnings.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <type_traits>
#include <vector>

#include "pool.h"

namespace {

using i64 = int64_t;

// dtype codes, in mmens/ops/listapi.py::_KINDS order.
enum Kind : uint8_t { kF64 = 0, kF32 = 1, kI64 = 2, kI32 = 3 };

bool is_float(uint8_t k) { return k == kF64 || k == kF32; }

// np.result_type of two of the kinds above.
uint8_t promote(uint8_t a, uint8_t b) {
  if (a == b) return a;
  return is_float(a) || is_float(b) ? kF64 : kI64;
}

// |label| < 2**53 (validation.py's LABEL_LIMIT).
constexpr double kLabelLimit = 9007199254740992.0;
constexpr i64 kLabelLimitInt = i64(1) << 53;

// One member's field: a NumPy array (through the buffer protocol) or a
// Python list (borrowed; the caller's lists keep it alive).
struct Field {
  const Py_buffer* view = nullptr;  // array; nullptr: Python list
  PyObject* list = nullptr;
  uint8_t kind = kF64;
  i64 rows = 0;
  int ndim = 1;
  const i64* shape = nullptr;  // array shape (ndim entries)
};

// Owns the buffers taken, released on every exit.
struct Views {
  std::deque<Py_buffer> bufs;
  ~Views() {
    for (auto& b : bufs) PyBuffer_Release(&b);
  }
};

PyObject* ndarray_type() {
  static PyObject* t = [] {
    py::object np = py::module_::import("numpy");
    return py::object(np.attr("ndarray")).release().ptr();  // kept for the process
  }();
  return t;
}

// The kind of a buffer's format, false for any other dtype or byte order.
bool buffer_kind(const Py_buffer& v, uint8_t* kind) {
  const char* f = v.format;
  if (f == nullptr) return false;
  if (*f == '@' || *f == '=') ++f;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  else if (*f == '<') ++f;
#endif
  if (f[0] == '\0' || f[1] != '\0') return false;
  const char c = f[0];
  if (c == 'd' && v.itemsize == 8) *kind = kF64;
  else if (c == 'f' && v.itemsize == 4) *kind = kF32;
  else if ((c == 'q' || c == 'l') && v.itemsize == 8) *kind = kI64;
  else if ((c == 'i' || c == 'l') && v.itemsize == 4) *kind = kI32;
  else return false;
  return true;
}

// A Python float or int (exact types) as a double; int: *is_int set.
bool py_number(PyObject* o, double* x, i64* xi, bool* is_int) {
  if (PyFloat_CheckExact(o)) {
    *x = PyFloat_AS_DOUBLE(o);
    *is_int = false;
    return true;
  }
  if (PyLong_CheckExact(o)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
      PyErr_Clear();
      return false;
    }
    *xi = v;
    *x = static_cast<double>(v);
    *is_int = true;
    return true;
  }
  return false;
}

// The kind of a flat Python list of numbers (np.asarray's: int64 when all are
// ints, else float64); false if an item is anything else.
bool list_kind_1d(PyObject* lst, uint8_t* kind) {
  const Py_ssize_t n = PyList_GET_SIZE(lst);
  bool all_int = n > 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    double x;
    i64 xi;
    bool is_int;
    if (!py_number(PyList_GET_ITEM(lst, i), &x, &xi, &is_int)) return false;
    all_int &= is_int;
  }
  *kind = all_int ? kI64 : kF64;
  return true;
}

// The same for a list of 4-number rows (lists or tuples).
bool list_kind_boxes(PyObject* lst, uint8_t* kind) {
  const Py_ssize_t n = PyList_GET_SIZE(lst);
  bool all_int = n > 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* row = PyList_GET_ITEM(lst, i);
    if (!(PyList_CheckExact(row) || PyTuple_CheckExact(row)) ||
        PySequence_Fast_GET_SIZE(row) != 4)
      return false;
    PyObject** items = PySequence_Fast_ITEMS(row);
    for (int t = 0; t < 4; ++t) {
      double x;
      i64 xi;
      bool is_int;
      if (!py_number(items[t], &x, &xi, &is_int)) return false;
      all_int &= is_int;
    }
  }
  *kind = all_int ? kI64 : kF64;
  return true;
}

// One member's field, its kind and rows; false: not a case read here.
bool read_field(PyObject* o, bool boxes, Views& views, Field* f) {
  if (PyList_CheckExact(o)) {
    f->list = o;
    f->rows = PyList_GET_SIZE(o);
    return boxes ? list_kind_boxes(o, &f->kind) : list_kind_1d(o, &f->kind);
  }
  if (Py_TYPE(o) != reinterpret_cast<PyTypeObject*>(ndarray_type()))
    return false;
  views.bufs.emplace_back();
  Py_buffer& v = views.bufs.back();
  if (PyObject_GetBuffer(o, &v, PyBUF_RECORDS_RO) != 0) {
    views.bufs.pop_back();
    PyErr_Clear();
    return false;
  }
  f->view = &v;
  f->ndim = v.ndim;
  f->shape = reinterpret_cast<const i64*>(v.shape);
  static_assert(sizeof(Py_ssize_t) == sizeof(i64), "Py_ssize_t is 64-bit");
  if (!buffer_kind(v, &f->kind)) return false;
  bool has_zero = false;
  for (int d = 0; d < v.ndim; ++d) has_zero |= v.shape[d] == 0;
  if (boxes) {
    if (v.ndim == 2 && v.shape[1] == 4) f->rows = v.shape[0];
    else if (has_zero) f->rows = 0;
    else return false;
  } else {
    f->rows = v.ndim == 1 ? v.shape[0] : (has_zero ? 0 : -1);
    if (f->rows < 0) return false;
  }
  return true;
}

// Scores / labels match their boxes: [n], or any empty shape when n == 0
// (validation.py::member_sizes).
bool rows_match(const Field& f, i64 n) {
  if (f.list != nullptr) return f.rows == n;
  if (f.ndim == 1 && f.rows == n) return true;
  if (n != 0) return false;
  for (int d = 0; d < f.ndim; ++d)
    if (f.shape[d] == 0) return true;
  return false;
}

// Element r * cols + c of an array field, as T (numpy may hand out unaligned
// or strided buffers: read with memcpy, which compiles to a plain load).
template <typename T>
inline T load(const char* base, i64 s0, i64 s1, i64 r, i64 c) {
  T x;
  std::memcpy(&x, base + r * s0 + c * s1, sizeof(T));
  return x;
}

// Copies an array field's rows x cols values into out as U.
template <typename T, typename U>
void copy_array(const Py_buffer& v, i64 rows, int cols, U* out) {
  const char* base = static_cast<const char*>(v.buf);
  const i64 s0 = v.strides[0], s1 = cols > 1 ? v.strides[1] : 0;
  if (s0 == cols * static_cast<i64>(sizeof(T)) &&
      (cols == 1 || s1 == static_cast<i64>(sizeof(T)))) {  // contiguous
    for (i64 e = 0; e < rows * cols; ++e)
      out[e] = static_cast<U>(load<T>(base, sizeof(T), 0, e, 0));
    return;
  }
  for (i64 r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      out[r * cols + c] = static_cast<U>(load<T>(base, s0, s1, r, c));
}

// A field's values into out as float64 (boxes: cols 4), whatever its kind.
void copy_doubles(const Field& f, int cols, double* out) {
  if (f.view == nullptr) {  // a Python list (items checked by list_kind_*)
    for (i64 r = 0; r < f.rows; ++r) {
      PyObject* o = PyList_GET_ITEM(f.list, r);
      for (int c = 0; c < cols; ++c) {
        double x;
        i64 xi;
        bool is_int;
        py_number(cols > 1 ? PySequence_Fast_ITEMS(o)[c] : o, &x, &xi,
                  &is_int);
        out[r * cols + c] = x;
      }
    }
    return;
  }
  switch (f.kind) {
    case kF64: return copy_array<double>(*f.view, f.rows, cols, out);
    case kF32: return copy_array<float>(*f.view, f.rows, cols, out);
    case kI64: return copy_array<int64_t>(*f.view, f.rows, cols, out);
    default: return copy_array<int32_t>(*f.view, f.rows, cols, out);
  }
}

// Boxes pass: copy as float64, check (finite, x2 >= x1, y2 >= y1), clip to
// [0, 1] and flag zero-area boxes, counting both per member; fills members
// and images.
bool pack_boxes(const std::vector<Field>& fs, i64 n, double* out, bool* keep,
                i64* member, i64* image, i64* n_out, i64* n_zero) {
  i64 j0 = 0;
  for (size_t q = 0; q < fs.size(); ++q) {
    const Field& f = fs[q];
    const i64 t = static_cast<i64>(q) % n;  // fs non-empty: n >= 1
    double* b = out + 4 * j0;
    copy_doubles(f, 4, b);
    bool ok = true;
    for (i64 r = 0; r < f.rows; ++r, b += 4)  // NaN fails the comparisons
      ok &= std::isfinite(b[0]) & std::isfinite(b[1]) & std::isfinite(b[2]) &
            std::isfinite(b[3]) & (b[2] >= b[0]) & (b[3] >= b[1]);
    if (!ok) return false;
    b = out + 4 * j0;
    i64 outside = 0, zero = 0;
    for (i64 r = 0; r < f.rows; ++r, b += 4) {
      bool clip = false;
      for (int c = 0; c < 4; ++c) {
        const bool lo = b[c] < 0.0, hi = b[c] > 1.0;
        clip |= lo | hi;
        b[c] = lo ? 0.0 : (hi ? 1.0 : b[c]);
      }
      const bool k = (b[2] - b[0]) * (b[3] - b[1]) != 0;
      keep[j0 + r] = k;
      outside += clip;
      zero += !k;
    }
    n_out[t] += outside;
    n_zero[t] += zero;
    std::fill(member + j0, member + j0 + f.rows, t);
    std::fill(image + j0, image + j0 + f.rows, static_cast<i64>(q) / n);
    j0 += f.rows;
  }
  return true;
}

// Scores pass: float64 in [0, 1].
bool pack_scores(const std::vector<Field>& fs, double* out) {
  for (const Field& f : fs) {
    copy_doubles(f, 1, out);
    bool ok = true;
    for (i64 r = 0; r < f.rows; ++r)
      ok &= (out[r] >= 0.0) & (out[r] <= 1.0);  // NaN fails too
    if (!ok) return false;
    out += f.rows;
  }
  return true;
}

// Labels of an array field: integers with |label| < 2**53, as int64.
template <typename T>
bool array_labels(const Py_buffer& v, i64 rows, i64* out) {
  const char* base = static_cast<const char*>(v.buf);
  bool ok = true;
  for (i64 r = 0; r < rows; ++r) {
    const T x = load<T>(base, v.strides[0], 0, r, 0);
    if constexpr (std::is_floating_point_v<T>) {
      const double d = x;
      const bool good = d > -kLabelLimit && d < kLabelLimit && d == std::trunc(d);
      ok &= good;
      out[r] = good ? static_cast<i64>(d) : 0;
    } else {
      ok &= x > -kLabelLimitInt && x < kLabelLimitInt;
      out[r] = x;
    }
  }
  return ok;
}

// Labels pass: integers with |label| < 2**53, as int64.
bool pack_labels(const std::vector<Field>& fs, i64* out) {
  for (const Field& f : fs) {
    bool ok;
    if (f.view != nullptr) {
      switch (f.kind) {
        case kF64: ok = array_labels<double>(*f.view, f.rows, out); break;
        case kF32: ok = array_labels<float>(*f.view, f.rows, out); break;
        case kI64: ok = array_labels<int64_t>(*f.view, f.rows, out); break;
        default: ok = array_labels<int32_t>(*f.view, f.rows, out);
      }
    } else {
      ok = true;
      for (i64 r = 0; r < f.rows && ok; ++r) {
        double x;
        i64 xi;
        bool is_int;
        py_number(PyList_GET_ITEM(f.list, r), &x, &xi, &is_int);
        ok = is_int ? xi > -kLabelLimitInt && xi < kLabelLimitInt
                    : x > -kLabelLimit && x < kLabelLimit && x == std::trunc(x);
        out[r] = is_int ? xi : (ok ? static_cast<i64>(x) : 0);
      }
    }
    if (!ok) return false;
    out += f.rows;
  }
  return true;
}

// The fields of one image: (boxes_list, scores_list, labels_list), each an
// exact list or tuple; false if not.
bool image_fields(PyObject* img, PyObject* lists[3]) {
  if (!(PyTuple_CheckExact(img) || PyList_CheckExact(img)) ||
      PySequence_Fast_GET_SIZE(img) != 3)
    return false;
  PyObject** items = PySequence_Fast_ITEMS(img);
  for (int k = 0; k < 3; ++k) {
    if (!(PyList_CheckExact(items[k]) || PyTuple_CheckExact(items[k])))
      return false;
    lists[k] = items[k];
  }
  return true;
}

}  // namespace

// images: [(boxes_list, scores_list, labels_list)] -> None (not packed here,
// see the top of the file) or (boxes [M, 4] float64 clipped, scores [M]
// float64, labels [M] int64, members [M], images [M] int64, keep [M] bool,
// counts [2, N] int64 (boxes clipped, boxes of zero area, per member),
// kinds [I, 3] uint8 (per image, the dtype code np.concatenate gives each
// field), num_members).
py::object pack_lists(py::handle images) {
  PyObject* seq = images.ptr();
  if (!(PyList_CheckExact(seq) || PyTuple_CheckExact(seq))) return py::none();
  const i64 num_images = PySequence_Fast_GET_SIZE(seq);
  PyObject** imgs = PySequence_Fast_ITEMS(seq);
  Views views;
  std::vector<Field> fields[3];  // per field, (image, member) image-major
  i64 n = -1;
  at::Tensor kinds = at::zeros({num_images, 3}, at::kByte);
  uint8_t* pk = kinds.data_ptr<uint8_t>();
  for (i64 i = 0; i < num_images; ++i) {
    PyObject* lists[3];
    if (!image_fields(imgs[i], lists)) return py::none();
    const i64 ni = PySequence_Fast_GET_SIZE(lists[0]);
    if (PySequence_Fast_GET_SIZE(lists[1]) != ni ||
        PySequence_Fast_GET_SIZE(lists[2]) != ni || (n >= 0 && ni != n))
      return py::none();
    n = ni;
    for (int k = 0; k < 3; ++k) {
      PyObject** members = PySequence_Fast_ITEMS(lists[k]);
      for (i64 t = 0; t < ni; ++t) {
        Field f;
        if (!read_field(members[t], k == 0, views, &f)) return py::none();
        if (k > 0 && !rows_match(f, fields[0][i * ni + t].rows))
          return py::none();
        pk[3 * i + k] = t ? promote(pk[3 * i + k], f.kind) : f.kind;
        fields[k].push_back(f);
      }
    }
  }
  n = std::max<i64>(n, 0);
  i64 m = 0;
  for (const Field& f : fields[0]) m += f.rows;
  // from the pool (pool.h): the list API frees them after its call, and
  // glibc would return them to the system in between calls
  using mmens::pooled_empty;
  at::Tensor boxes = pooled_empty({m, 4}, at::kDouble);
  at::Tensor scores = pooled_empty({m}, at::kDouble);
  at::Tensor labels = pooled_empty({m}, at::kLong);
  at::Tensor members = pooled_empty({m}, at::kLong);
  at::Tensor image = pooled_empty({m}, at::kLong);
  at::Tensor keep = pooled_empty({m}, at::kBool);
  at::Tensor counts = at::zeros({2, n}, at::TensorOptions().dtype(at::kLong));
  i64* pc = counts.data_ptr<i64>();
  if (!pack_boxes(fields[0], n, boxes.data_ptr<double>(),
                  keep.data_ptr<bool>(), members.data_ptr<i64>(),
                  image.data_ptr<i64>(), pc, pc + n) ||
      !pack_scores(fields[1], scores.data_ptr<double>()) ||
      !pack_labels(fields[2], labels.data_ptr<i64>()))
    return py::none();
  return py::make_tuple(boxes, scores, labels, members, image, keep, counts,
                        kinds, n);
}
