// Compiled CPU kernels of mmens' box fusion: WBF, NMW, hard NMS, soft-NMS.
//
// Each kernel takes the packed, validated and repaired detections that
// mmens/ops/prepare.py gives (float64 boxes normalised to [0, 1], long labels
// and image indices) and replays, per (image, label) group, exactly the rule
// and the float arithmetic of the pure-torch path (mmens/ops/greedy.py,
// clustering.py, nmw.py, nms.py, soft_nms.py), which itself reproduces
// ensemble-boxes 1.0.9 with a stable tie order. The torch path runs every
// group in lock-step with tensor ops; here each group is a plain loop, and the
// groups run in parallel with OpenMP (torch's thread count).
//
// Bit-for-bit rules kept from the torch path:
// * order inside a group: score descending, ties later packed box first
//   (soft-NMS: packed order);
// * IoU in ensemble-boxes' operation order, with the cluster / kept box as
//   "A" and the new box as "B";
// * WBF sums score * box in float32 storage (each addition done in float64,
//   then rounded) and stores the fused box in float32; a one-box cluster keeps
//   its raw float64 box;
// * every sum runs in the same order as the torch path's index_add_ (rank
//   order inside a group), and member sums in member order.
// Built without -ffast-math and with -ffp-contract=off so that no FMA changes
// a rounding.
//
// Each entry point TORCH_CHECKs its own preconditions (dtypes, every size
// relation between its tensors, index ranges, counts, parameter ranges)
// before any work, so a direct call with bad arguments raises a Python
// RuntimeError instead of reading or writing out of bounds; nothing inside an
// OpenMP region throws (an exception escaping one would abort the process),
// and no buffer is sized by the span of the label values.
//
// MMENS_PORTABLE (setup.py, env MMENS_PORTABLE=1): plain C++ only, no x86
// intrinsics, no AVX2 function clone and no private SLEEF symbol of
// libtorch, so the kernel builds on aarch64; the gaussian decay then uses
// std::exp (within the 1 ulp of mmens/ops/kernel.py's numerical contract).
#include <torch/extension.h>

#ifndef MMENS_PORTABLE
#include <immintrin.h>
#endif
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "pool.h"

namespace {

using i64 = int64_t;
// The large per-call buffers come from mmens' pool (pool.h), which keeps
// them between calls: glibc would hand them back to the system and the next
// call would fault every page in again.
using mmens::PoolVec;
using mmens::pooled_empty;

// Below this many boxes a call runs on one thread: starting the OpenMP team
// costs more than it saves.
constexpr i64 kParallelBoxes = 2048;

inline double f32(double x) {
  return static_cast<double>(static_cast<float>(x));
}

// IoU of a (cluster / kept box) and b (new box), in ensemble-boxes' order.
inline double iou(const double* a, const double* b) {
  const double xa = std::max(a[0], b[0]);
  const double ya = std::max(a[1], b[1]);
  const double xb = std::min(a[2], b[2]);
  const double yb = std::min(a[3], b[3]);
  const double inter = std::max(xb - xa, 0.0) * std::max(yb - ya, 0.0);
  const double area_a = std::max(a[2] - a[0], 0.0) * std::max(a[3] - a[1], 0.0);
  const double area_b = std::max(b[2] - b[0], 0.0) * std::max(b[3] - b[1], 0.0);
  return inter / (area_a + area_b - inter);
}

int team_size(i64 work) {
  return work >= kParallelBoxes ? at::get_num_threads() : 1;
}

void check_input(const at::Tensor& t, at::ScalarType dtype, i64 dim,
                 const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dims");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Sort key of a box inside its group: order_by descending, then packed
// index descending (see build_layout).
struct SortKey {
  uint64_t order;  // see desc_key
  i64 idx;
  bool operator<(const SortKey& o) const {
    return order != o.order ? order < o.order : idx > o.idx;
  }
};

// uint64 whose ascending order is the descending order of x (x >= 0 or any
// finite double; -0.0 counts as 0.0, like mmens/ops/layout.py).
inline uint64_t desc_key(double x) {
  x += 0.0;
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  u = (u >> 63) ? ~u : (u | (uint64_t(1) << 63));  // ascending in x
  return ~u;
}

// The detections every kernel takes, checked, as raw pointers.
struct Dets {
  const double* boxes;   // [M, 4]
  const double* scores;  // [M] (weighted) scores that order a group
  const i64* labels;     // [M]
  const i64* images;     // [M]
  const bool* keep;      // [M] boxes to fuse
  i64 m;
};

// Every value of the long tensor t lies in [0, hi).
void check_index(const at::Tensor& t, i64 hi, const char* name) {
  const i64* v = t.data_ptr<i64>();
  const i64 m = t.size(0);
  bool ok = true;  // one branch-free pass (it vectorises), then the culprit
  for (i64 j = 0; j < m; ++j) ok &= (v[j] >= 0) & (v[j] < hi);
  if (ok) return;
  for (i64 j = 0; j < m; ++j)
    TORCH_CHECK(v[j] >= 0 && v[j] < hi, name, "[", j, "] = ", v[j],
                " is outside [0, ", hi, ")");
}

// The IoU threshold: a number in [0, 1] (NaN fails).
void check_iou_thr(double iou_thr) {
  TORCH_CHECK(iou_thr >= 0.0 && iou_thr <= 1.0,
              "iou_thr must be in [0, 1], got ", iou_thr);
}

// boxes [M, 4], scores, labels, images and keep [M]; images in [0, I).
Dets check_dets(const at::Tensor& boxes, const at::Tensor& scores,
                const at::Tensor& labels, const at::Tensor& images,
                const at::Tensor& keep, i64 num_images) {
  check_input(boxes, at::kDouble, 2, "boxes");
  check_input(scores, at::kDouble, 1, "scores");
  check_input(labels, at::kLong, 1, "labels");
  check_input(images, at::kLong, 1, "images");
  check_input(keep, at::kBool, 1, "keep");
  const i64 m = boxes.size(0);
  TORCH_CHECK(boxes.size(1) == 4, "boxes must be [M, 4], got [", m, ", ",
              boxes.size(1), "]");
  for (const auto* t : {&scores, &labels, &images, &keep})
    TORCH_CHECK(t->size(0) == m, "scores, labels, images and keep must have ",
                "the M = ", m, " entries of boxes, got ", t->size(0));
  TORCH_CHECK(num_images >= 0, "num_images must be >= 0, got ", num_images);
  check_index(images, num_images, "images");
  return {boxes.data_ptr<double>(), scores.data_ptr<double>(),
          labels.data_ptr<i64>(),   images.data_ptr<i64>(),
          keep.data_ptr<bool>(),    m};
}

// The kept boxes grouped by (image, label) -- or image only -- with the
// groups of an image contiguous and in label order.
struct Layout {
  PoolVec<i64> idx;        // [K] packed index of the box at each position
  PoolVec<i64> gstart;     // [G + 1] first position of each group
  PoolVec<i64> gfirst;     // [G] smallest packed index in the group
  PoolVec<i64> img_group;  // [I + 1] first group of each image
};

// Sorts idx[b, e) stably by label and appends the [start, end) run of each
// label to runs: a counting sort when the labels are dense, else a stable
// comparison sort (never a buffer sized by the label span).
void label_runs(i64* idx, i64 b, i64 e, const i64* labels,
                std::vector<i64>& tmp, std::vector<i64>& cnt,
                std::vector<std::pair<i64, i64>>& runs) {
  i64 lo = labels[idx[b]], hi = lo;
  for (i64 p = b; p < e; ++p) {
    lo = std::min(lo, labels[idx[p]]);
    hi = std::max(hi, labels[idx[p]]);
  }
  // label offsets in uint64: exact for any two int64 labels
  auto off = [&](i64 p) {
    return static_cast<i64>(static_cast<uint64_t>(labels[idx[p]]) -
                            static_cast<uint64_t>(lo));
  };
  const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
  if (span < static_cast<uint64_t>(4 * (e - b) + 64)) {  // counting sort
    const i64 nl = static_cast<i64>(span);
    cnt.assign(nl + 2, 0);
    for (i64 p = b; p < e; ++p) ++cnt[off(p) + 1];
    for (i64 l = 0; l <= nl; ++l) {
      if (cnt[l + 1]) runs.push_back({b + cnt[l], b + cnt[l] + cnt[l + 1]});
      cnt[l + 1] += cnt[l];
    }
    tmp.resize(e - b);
    for (i64 p = b; p < e; ++p) tmp[cnt[off(p)]++] = idx[p];
    std::copy(tmp.begin(), tmp.end(), idx + b);
  } else {  // sparse labels: a stable comparison sort by label
    std::stable_sort(idx + b, idx + e, [&](i64 x, i64 y) {
      return labels[x] < labels[y];
    });
    for (i64 p = b; p < e; ++p)
      if (p == b || labels[idx[p]] != labels[idx[p - 1]])
        runs.push_back({p, p});
    for (size_t r = 0; r < runs.size(); ++r)
      runs[r].second = r + 1 < runs.size() ? runs[r + 1].first : e;
  }
}

// Groups the kept boxes. Inside a group, boxes are sorted by `order_by`
// descending, ties later packed box first; without `order_by` they stay in
// packed order (soft-NMS).
Layout build_layout(const i64* labels, const i64* images, const bool* keep,
                    const double* order_by, i64 m, i64 num_images,
                    bool class_agnostic) {
  Layout lay;
  // counting sort by image (stable: packed order inside an image)
  std::vector<i64> ioff(num_images + 1, 0);
  for (i64 j = 0; j < m; ++j)
    if (keep[j]) ++ioff[images[j] + 1];
  for (i64 i = 0; i < num_images; ++i) ioff[i + 1] += ioff[i];
  const i64 k = ioff[num_images];
  lay.idx.resize(k);
  {
    std::vector<i64> fill(ioff.begin(), ioff.end() - 1);
    for (i64 j = 0; j < m; ++j)
      if (keep[j]) lay.idx[fill[images[j]]++] = j;
  }
  // sort each image's boxes by (label, order_by desc, packed index desc):
  // a counting sort by label (stable, so soft-NMS keeps the packed order),
  // then a sort of each label's boxes on compact keys
  i64* idx = lay.idx.data();
#pragma omp parallel num_threads(team_size(k))
  {
    std::vector<SortKey> keys;
    std::vector<i64> tmp, cnt;
#pragma omp for schedule(dynamic, 16)
    for (i64 i = 0; i < num_images; ++i) {
      const i64 b = ioff[i], e = ioff[i + 1];
      if (e - b < 2) continue;
      std::vector<std::pair<i64, i64>> runs;  // [start, end) of each label
      if (class_agnostic) {
        runs.push_back({b, e});
      } else {
        label_runs(idx, b, e, labels, tmp, cnt, runs);
      }
      if (order_by == nullptr) continue;
      for (const auto& run : runs) {
        const i64 rb = run.first, re = run.second;
        if (re - rb < 2) continue;
        keys.resize(re - rb);
        for (i64 p = rb; p < re; ++p)
          keys[p - rb] = {desc_key(order_by[idx[p]]), idx[p]};
        std::sort(keys.begin(), keys.end());
        for (i64 p = rb; p < re; ++p) idx[p] = keys[p - rb].idx;
      }
    }
  }
  // group boundaries (one O(K) pass)
  lay.img_group.assign(num_images + 1, 0);
  for (i64 i = 0; i < num_images; ++i) {
    lay.img_group[i] = static_cast<i64>(lay.gstart.size());
    for (i64 p = ioff[i]; p < ioff[i + 1]; ++p) {
      const i64 j = idx[p];
      if (p == ioff[i] ||
          (!class_agnostic && labels[j] != labels[idx[p - 1]])) {
        lay.gstart.push_back(p);
        lay.gfirst.push_back(j);
      } else {
        lay.gfirst.back() = std::min(lay.gfirst.back(), j);
      }
    }
  }
  lay.img_group[num_images] = static_cast<i64>(lay.gstart.size());
  lay.gstart.push_back(k);
  return lay;
}

// Per-slot state of the greedy clustering. Cluster c of the group starting
// at position s lives in slot s + c (a group has at most as many clusters as
// boxes).
struct Greedy {
  PoolVec<i64> cluster;       // [K] cluster index (in its group) of each box
  PoolVec<i64> ncl;           // [G] clusters per group
  PoolVec<double> ref;        // [K, 4] fused box (WBF) or leader box
  PoolVec<i64> leader;        // [K] position of the box opening the slot
  PoolVec<double> score;      // [K] fused score (WBF)
};

enum ConfType { kAvg = 0, kMax = 1, kBoxAndModelAvg = 2, kAbsentAware = 3 };

// WBF's fused-score rule (ensemble-boxes' conf_type and its inputs).
struct ScoreRule {
  i64 conf_type;
  bool allows_overflow;
  i64 n;              // members
  const double* w;    // [N] member weights
  double weight_sum;  // w.sum() as torch computes it
  double weight_max;
};

// Scratch of one thread: the current group's cluster boxes and areas as
// separate arrays, so the candidate loop streams through memory, and its
// clusters' running WBF state (kept per group, not per call: the group is
// scored as soon as it is clustered).
struct Scratch {
  std::vector<double> x1, y1, x2, y2, area, iou;
  std::vector<double> acc;   // [n, 5] float32-stored score * box sums, conf
  std::vector<i64> count;    // [n] boxes per cluster
  std::vector<double> wsum;  // [n] member weights per cluster
  std::vector<double> smax;  // [n] max weighted score per cluster
  std::vector<char> present; // [n, N] members present per cluster
  void reserve(i64 n) {
    if (static_cast<i64>(x1.size()) < n) {
      for (auto* v : {&x1, &y1, &x2, &y2, &area, &iou}) v->resize(n);
    }
  }
  void set(i64 c, const double* r) {
    x1[c] = r[0];
    y1[c] = r[1];
    x2[c] = r[2];
    y2[c] = r[3];
    area[c] = std::max(r[2] - r[0], 0.0) * std::max(r[3] - r[1], 0.0);
  }
};

// IoU of box b with the n boxes (x1, y1, x2, y2, area) into out; returns
// how many exceed thr. Branch-free so that it vectorises, with an AVX2 clone
// picked at run time where the CPU has it (an AVX2 clone of the whole
// WBF group loop changed float32-rounded fused boxes, so only this loop is
// cloned); the ternaries are the exact x86 min/max
// semantics (equal to std::min/max up to the sign of a zero, which changes
// no IoU decision). The IoU is ensemble-boxes' with the listed box as "A".
#ifndef MMENS_PORTABLE
__attribute__((target_clones("avx2", "default")))
#endif
i64 batch_iou(
    const double* __restrict x1, const double* __restrict y1,
    const double* __restrict x2, const double* __restrict y2,
    const double* __restrict area, i64 n, const double* b, double area_b,
    double thr, double* __restrict out) {
  const double b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
  i64 above = 0;
  for (i64 c = 0; c < n; ++c) {
    const double xa = x1[c] > b0 ? x1[c] : b0;
    const double ya = y1[c] > b1 ? y1[c] : b1;
    const double xb = x2[c] < b2 ? x2[c] : b2;
    const double yb = y2[c] < b3 ? y2[c] : b3;
    const double w = xb - xa, h = yb - ya;
    const double inter = (w > 0.0 ? w : 0.0) * (h > 0.0 ? h : 0.0);
    const double v = inter / (area[c] + area_b - inter);
    out[c] = v;
    above += v > thr;
  }
  return above;
}

// WBF's fused score of each cluster of a group, with ensemble-boxes'
// float32 storage and rescaling (same operation order as the torch path's
// mmens/ops/clustering.py::_wbf_scores).
void score_group(Greedy& g, Scratch& sc, i64 s, i64 e, i64 nc,
                 const Layout& lay, const i64* members, const ScoreRule& r) {
  const i64 n = r.n;
  if (r.conf_type >= kBoxAndModelAvg) {
    sc.present.assign(nc * n, 0);
    for (i64 p = s; p < e; ++p)
      sc.present[g.cluster[p] * n + members[lay.idx[p]]] = 1;
  }
  for (i64 c = 0; c < nc; ++c) {
    const i64 cnt = sc.count[c];
    const bool multi = cnt >= 2;  // one-box clusters keep float64 values
    const double conf = sc.acc[5 * c + 4];
    const double cntf = static_cast<double>(cnt);
    double s0;
    if (r.conf_type == kMax)
      s0 = multi ? f32(sc.smax[c]) : sc.smax[c];
    else
      s0 = multi ? f32(conf / cntf) : conf;
    const double wf = multi ? f32(sc.wsum[c]) : sc.wsum[c];
    double out;
    if (r.conf_type == kAvg) {
      const double mm =
          r.allows_overflow ? cntf : std::min(cntf, static_cast<double>(n));
      out = s0 * mm / r.weight_sum;
    } else if (r.conf_type == kMax) {
      out = s0 / (n ? r.weight_max : 1.0);
    } else {
      double sum = 0.0;  // present (or absent) member weights, in order
      const bool want = r.conf_type == kBoxAndModelAvg;
      for (i64 t = 0; t < n; ++t)
        if (static_cast<bool>(sc.present[c * n + t]) == want) sum += r.w[t];
      out = want ? s0 * cntf / wf * sum / r.weight_sum
                 : s0 * cntf / (wf + sum);
    }
    g.score[s + c] = out;
  }
}

// Greedy clustering of one group (positions [s, e)). `fused`: match against
// the running fused box (WBF), else against the cluster's first box.
void cluster_group(Greedy& g, Scratch& sc, i64 gi, i64 s, i64 e,
                   const Layout& lay, const double* boxes, const double* ws,
                   const i64* members, const ScoreRule* rule, double iou_thr) {
  const bool fused = rule != nullptr;
  sc.reserve(e - s);
  if (fused) {  // sized, not zeroed: a cluster's state is reset as it opens
    sc.acc.resize(5 * (e - s));
    sc.count.resize(e - s);
    sc.wsum.resize(e - s);
    sc.smax.resize(e - s);
  }
  const double* cx1 = sc.x1.data();
  const double* cy1 = sc.y1.data();
  const double* cx2 = sc.x2.data();
  const double* cy2 = sc.y2.data();
  const double* car = sc.area.data();
  i64 ncl = 0;
  for (i64 p = s; p < e; ++p) {
    const i64 j = lay.idx[p];
    if (p + 3 < e) {  // boxes are visited by rank: fetch ahead of the misses
      __builtin_prefetch(boxes + 4 * lay.idx[p + 3]);
      __builtin_prefetch(ws + lay.idx[p + 3]);
    }
    const double* b = boxes + 4 * j;
    const double area_b =
        std::max(b[2] - b[0], 0.0) * std::max(b[3] - b[1], 0.0);
    const i64 above = batch_iou(cx1, cy1, cx2, cy2, car, ncl, b, area_b,
                                iou_thr, sc.iou.data());
    // first max, like np.argmax, needed only when some IoU passes iou_thr
    const double* v = sc.iou.data();
    double best_iou = iou_thr;
    i64 best = -1;
    if (above)
      for (i64 c = 0; c < ncl; ++c)
        if (v[c] > best_iou) {
          best_iou = v[c];
          best = c;
        }
    const bool join = best >= 0;
    const i64 c = join ? best : ncl++;
    const i64 slot = s + c;
    g.cluster[p] = c;
    double* r = &g.ref[4 * slot];
    if (!join) g.leader[slot] = p;
    if (fused) {
      double* a = &sc.acc[5 * c];
      if (!join) {
        std::fill(a, a + 5, 0.0);
        sc.count[c] = 0;
        sc.wsum[c] = 0.0;
        sc.smax[c] = 0.0;
      }
      double nw[5];
      for (int t = 0; t < 4; ++t) nw[t] = f32(a[t] + ws[j] * b[t]);
      nw[4] = a[4] + ws[j];
      if (!join) {
        for (int t = 0; t < 4; ++t) r[t] = b[t];
        sc.set(c, r);
      } else if (nw[4] != 0) {  // all-zero-score clusters keep their 1st box
        for (int t = 0; t < 4; ++t) r[t] = f32(nw[t] / nw[4]);
        sc.set(c, r);
      }
      for (int t = 0; t < 5; ++t) a[t] = nw[t];
      sc.count[c] += 1;
      sc.wsum[c] += rule->w[members[j]];
      sc.smax[c] = std::max(sc.smax[c], ws[j]);
    } else if (!join) {
      for (int t = 0; t < 4; ++t) r[t] = b[t];
      sc.set(c, r);
    }
  }
  g.ncl[gi] = ncl;
  if (fused) score_group(g, sc, s, e, ncl, lay, members, *rule);
}

Greedy run_greedy(const Layout& lay, const double* boxes, const double* ws,
                  const i64* members, const ScoreRule* rule, double iou_thr) {
  const i64 k = static_cast<i64>(lay.idx.size());
  const i64 ng = static_cast<i64>(lay.gfirst.size());
  Greedy g;
  g.cluster.resize(k);
  g.ncl.resize(ng);
  g.ref.resize(4 * k);
  g.leader.resize(k);
  if (rule != nullptr) g.score.resize(k);
#pragma omp parallel num_threads(team_size(k))
  {
    Scratch sc;
#pragma omp for schedule(dynamic, 8)
    for (i64 gi = 0; gi < ng; ++gi)
      cluster_group(g, sc, gi, lay.gstart[gi], lay.gstart[gi + 1], lay,
                    boxes, ws, members, rule, iou_thr);
  }
  return g;
}

// One cluster of an image in the output sort: score descending, then
// ensemble-boxes' concatenation position descending (group's first packed
// box, then creation order), which is the torch path's tie rule.
struct OutKey {
  uint64_t score;  // desc_key of the score
  i64 first;
  i64 rank;
  i64 slot;
  i64 group;
  bool operator<(const OutKey& o) const {
    if (score != o.score) return score < o.score;
    if (first != o.first) return first > o.first;
    return rank > o.rank;
  }
};

// Offsets of each image's clusters in the output ([I + 1]).
std::vector<i64> image_offsets(const Layout& lay, const PoolVec<i64>& ncl,
                               i64 num_images) {
  std::vector<i64> off(num_images + 1, 0);
  for (i64 i = 0; i < num_images; ++i) {
    i64 c = 0;
    for (i64 gi = lay.img_group[i]; gi < lay.img_group[i + 1]; ++gi)
      c += ncl[gi];
    off[i + 1] = off[i] + c;
  }
  return off;
}

// Sorts each image's clusters and calls write(out_position, slot, group,
// image).
template <typename Score, typename Write>
void write_sorted(const Layout& lay, const PoolVec<i64>& ncl,
                  const std::vector<i64>& off, i64 num_images, i64 work,
                  Score score, Write write) {
#pragma omp parallel num_threads(team_size(work))
  {
    std::vector<OutKey> keys;
#pragma omp for schedule(dynamic, 16)
    for (i64 i = 0; i < num_images; ++i) {
      keys.clear();
      for (i64 gi = lay.img_group[i]; gi < lay.img_group[i + 1]; ++gi)
        for (i64 c = 0; c < ncl[gi]; ++c) {
          const i64 slot = lay.gstart[gi] + c;
          keys.push_back(
              {desc_key(score(slot, gi)), lay.gfirst[gi], c, slot, gi});
        }
      std::sort(keys.begin(), keys.end());
      for (size_t r = 0; r < keys.size(); ++r)
        write(off[i] + r, keys[r].slot, keys[r].group, i);
    }
  }
}

// A packed box with the label of the cluster in slot of group gi: its
// leader (class-agnostic groups mix labels), else any box of the group, the
// group's first, one load per group rather than a chain of them per cluster.
inline i64 group_box(const Layout& lay, const Greedy& g, i64 slot, i64 gi,
                     bool class_agnostic) {
  return class_agnostic ? lay.idx[g.leader[slot]] : lay.gfirst[gi];
}

// Output tensors of WBF / NMW: nout fused boxes, scores, labels, images.
struct FusedOut {
  at::Tensor boxes, scores, labels, images;
  double *pb, *ps;
  i64 *pl, *pi;
  explicit FusedOut(i64 nout)
      : boxes(pooled_empty({nout, 4}, at::kDouble)),
        scores(pooled_empty({nout}, at::kDouble)),
        labels(pooled_empty({nout}, at::kLong)),
        images(pooled_empty({nout}, at::kLong)),
        pb(boxes.data_ptr<double>()), ps(scores.data_ptr<double>()),
        pl(labels.data_ptr<i64>()), pi(images.data_ptr<i64>()) {}
  // Row r: the box, the score, the label and the image.
  void set(i64 r, const double* box, double score, i64 label, i64 image) {
    for (int t = 0; t < 4; ++t) pb[4 * r + t] = box[t];
    ps[r] = score;
    pl[r] = label;
    pi[r] = image;
  }
};

// WBF of the boxes that are valid and score >= skip_box_thr, clustered and
// fused by their weighted scores scores * weights[members]: returns the fused
// boxes, scores, labels and images in output order (per image, score
// descending), then, with_clusters, for every clustered box (positions in
// group, rank order) its packed index and its output cluster (empty tensors
// otherwise).
std::vector<at::Tensor> wbf(const at::Tensor& boxes_t,
                            const at::Tensor& scores_t,
                            const at::Tensor& labels_t,
                            const at::Tensor& members_t,
                            const at::Tensor& images_t,
                            const at::Tensor& valid_t,
                            const at::Tensor& weights_t, i64 num_images,
                            double iou_thr, double skip_box_thr, i64 conf_type,
                            bool allows_overflow, bool class_agnostic,
                            double weight_sum, double weight_max,
                            bool with_clusters) {
  const Dets d =
      check_dets(boxes_t, scores_t, labels_t, images_t, valid_t, num_images);
  check_input(members_t, at::kLong, 1, "members");
  check_input(weights_t, at::kDouble, 1, "weights");
  TORCH_CHECK(members_t.size(0) == d.m, "members must have the M = ", d.m,
              " entries of boxes, got ", members_t.size(0));
  check_index(members_t, weights_t.size(0), "members");
  TORCH_CHECK(conf_type >= 0 && conf_type <= 3,
              "conf_type must be in [0, 3], got ", conf_type);
  check_iou_thr(iou_thr);
  const i64* members = members_t.data_ptr<i64>();
  const double* w = weights_t.data_ptr<double>();
  const i64 n = weights_t.size(0);
  // weighted scores and the boxes to fuse, as mmens/ops/clustering.py
  // computes them (here: no full-size torch temporaries, see pool.h)
  PoolVec<double> ws_v(d.m);
  const at::Tensor keep_t = pooled_empty({d.m}, at::kBool);
  double* ws = ws_v.data();
  bool* keep = keep_t.data_ptr<bool>();
  for (i64 j = 0; j < d.m; ++j) {
    ws[j] = d.scores[j] * w[members[j]];
    keep[j] = d.keep[j] & (d.scores[j] >= skip_box_thr);
  }
  const double* boxes = d.boxes;
  const Layout lay = build_layout(d.labels, d.images, keep, ws, d.m,
                                  num_images, class_agnostic);
  const ScoreRule rule{conf_type, allows_overflow, n, w, weight_sum,
                       weight_max};
  const Greedy g = run_greedy(lay, boxes, ws, members, &rule, iou_thr);
  const i64 k = static_cast<i64>(lay.idx.size());
  const i64 ng = static_cast<i64>(lay.gfirst.size());

  const PoolVec<double>& score = g.score;
  const std::vector<i64> off = image_offsets(lay, g.ncl, num_images);
  FusedOut out(off[num_images]);
  const i64 kc = with_clusters ? k : 0;  // fusion alone needs no box map
  at::Tensor bidx = pooled_empty({kc}, at::kLong);
  at::Tensor bcl = pooled_empty({kc}, at::kLong);
  PoolVec<i64> out_of_slot(kc);
  write_sorted(
      lay, g.ncl, off, num_images, k,
      [&](i64 slot, i64) { return score[slot]; },
      [&](i64 r, i64 slot, i64 gi, i64 i) {
        out.set(r, &g.ref[4 * slot], score[slot],
                d.labels[group_box(lay, g, slot, gi, class_agnostic)], i);
        if (with_clusters) out_of_slot[slot] = r;
      });
  if (!with_clusters) return {out.boxes, out.scores, out.labels, out.images, bidx, bcl};
  i64* pbi = bidx.data_ptr<i64>();
  i64* pbc = bcl.data_ptr<i64>();
#pragma omp parallel for schedule(dynamic, 8) num_threads(team_size(k))
  for (i64 gi = 0; gi < ng; ++gi)
    for (i64 p = lay.gstart[gi]; p < lay.gstart[gi + 1]; ++p) {
      pbi[p] = lay.idx[p];
      pbc[p] = out_of_slot[lay.gstart[gi] + g.cluster[p]];
    }
  return {out.boxes, out.scores, out.labels, out.images, bidx, bcl};
}

// NMW and NMS: the checked detections, their layout and their clusters,
// each matched against its first box.
struct LeaderClusters {
  Dets d;
  Layout lay;
  Greedy g;
  bool class_agnostic;
};

// The Python entry of a leader-clustering op: checks, clusters, then calls
// Op(clusters, num_images). (scores: the scores that order a group.)
template <std::vector<at::Tensor> (*Op)(const LeaderClusters&, i64)>
std::vector<at::Tensor> leader_op(const at::Tensor& boxes_t,
                                  const at::Tensor& sc_t,
                                  const at::Tensor& labels_t,
                                  const at::Tensor& images_t,
                                  const at::Tensor& keep_t, i64 num_images,
                                  double iou_thr, bool class_agnostic) {
  const Dets d =
      check_dets(boxes_t, sc_t, labels_t, images_t, keep_t, num_images);
  check_iou_thr(iou_thr);
  Layout lay = build_layout(d.labels, d.images, d.keep, d.scores, d.m,
                            num_images, class_agnostic);
  Greedy g = run_greedy(lay, d.boxes, d.scores, nullptr, nullptr, iou_thr);
  return Op(LeaderClusters{d, std::move(lay), std::move(g), class_agnostic},
            num_images);
}

// NMW: clusters matched against their first box; the fused box is the mean
// of the cluster's boxes weighted by score * IoU(box, first box), the score
// the first box's (float32, like ensemble-boxes).
std::vector<at::Tensor> nmw(const LeaderClusters& lc, i64 num_images) {
  const Dets& d = lc.d;
  const Layout& lay = lc.lay;
  const Greedy& g = lc.g;
  const double *boxes = d.boxes, *ws = d.scores;
  const i64 k = static_cast<i64>(lay.idx.size());
  const i64 ng = static_cast<i64>(lay.gfirst.size());
  PoolVec<double> fused(4 * k, 0.0), conf(k, 0.0);
#pragma omp parallel for schedule(dynamic, 8) num_threads(team_size(k))
  for (i64 gi = 0; gi < ng; ++gi) {
    const i64 s = lay.gstart[gi];
    for (i64 p = s; p < lay.gstart[gi + 1]; ++p) {  // rank order, like index_add_
      const i64 slot = s + g.cluster[p];
      const double* b = boxes + 4 * lay.idx[p];
      const double wt = ws[lay.idx[p]] * iou(b, &g.ref[4 * slot]);
      for (int t = 0; t < 4; ++t) fused[4 * slot + t] += wt * b[t];
      conf[slot] += wt;
    }
    for (i64 c = 0; c < g.ncl[gi]; ++c) {
      const i64 slot = s + c;
      for (int t = 0; t < 4; ++t)
        fused[4 * slot + t] =
            f32(conf[slot] > 0 ? fused[4 * slot + t] / std::max(conf[slot], 1e-300)
                               : g.ref[4 * slot + t]);
    }
  }
  const std::vector<i64> off = image_offsets(lay, g.ncl, num_images);
  FusedOut out(off[num_images]);
  auto lead_score = [&](i64 slot, i64) {
    return f32(ws[lay.idx[g.leader[slot]]]);
  };
  write_sorted(lay, g.ncl, off, num_images, k, lead_score,
               [&](i64 r, i64 slot, i64 gi, i64 i) {
                 out.set(r, &fused[4 * slot], lead_score(slot, 0),
                         d.labels[group_box(lay, g, slot, gi,
                                            lc.class_agnostic)],
                         i);
               });
  return {out.boxes, out.scores, out.labels, out.images};
}

// Hard NMS: the packed index of every kept box and its rank in its group
// (the caller orders them, see mmens/ops/nms.py::finish).
std::vector<at::Tensor> nms(const LeaderClusters& lc, i64) {
  const Layout& lay = lc.lay;
  const Greedy& g = lc.g;
  const i64 ng = static_cast<i64>(lay.gfirst.size());
  std::vector<i64> goff(ng + 1, 0);
  for (i64 gi = 0; gi < ng; ++gi) goff[gi + 1] = goff[gi] + g.ncl[gi];
  at::Tensor sel = pooled_empty({goff[ng]}, at::kLong);
  at::Tensor rank = pooled_empty({goff[ng]}, at::kLong);
  i64* ps = sel.data_ptr<i64>();
  i64* pr = rank.data_ptr<i64>();
  for (i64 gi = 0; gi < ng; ++gi)
    for (i64 c = 0; c < g.ncl[gi]; ++c) {
      const i64 lp = g.leader[lay.gstart[gi] + c];
      ps[goff[gi] + c] = lay.idx[lp];
      pr[goff[gi] + c] = lp - lay.gstart[gi];
    }
  return {sel, rank};
}

#ifndef MMENS_PORTABLE
// SLEEF's 4-lane exp, exported by libtorch_cpu: the exp torch's own CPU
// kernels use on AVX2 hosts, where the gaussian decay is then bit-equal to
// the pure-torch path's. Where torch dispatches to another variant (the
// 8-lane one on AVX-512 hosts) or without AVX2, the two exps are each
// faithfully rounded (SLEEF u10, glibc), so they differ by at most 1 ulp:
// the numerical contract of mmens/ops/kernel.py.
extern "C" __m256d Sleef_expd4_u10(__m256d);

const bool kHaveAvx2 = __builtin_cpu_supports("avx2");

// sc[u] *= decay(ovr[u]) for u < n: gaussian exp(-(o * o) / sigma) (method
// 2) or linear 1 - o above iou_thr (method 1); a decay of 1 (IoU 0) leaves
// the score bit-for-bit unchanged, so lanes of non-overlapping boxes are
// skipped.
__attribute__((target("avx2"))) void decay_avx2(const double* ovr,
                                                double* sc, i64 n,
                                                i64 method, double iou_thr,
                                                double sigma) {
  if (method == 1) {
    for (i64 u = 0; u < n; ++u)
      sc[u] = (ovr[u] > iou_thr ? 1 - ovr[u] : 1.0) * sc[u];
    return;
  }
  const __m256d vs = _mm256_set1_pd(sigma);
  const __m256d sign = _mm256_set1_pd(-0.0);
  const __m256d zero = _mm256_setzero_pd();
  for (i64 u = 0; u < n; u += 4) {
    double o4[4] = {0, 0, 0, 0}, s4[4] = {0, 0, 0, 0};
    const i64 m = std::min<i64>(4, n - u);
    std::copy(ovr + u, ovr + u + m, o4);
    const __m256d o = _mm256_loadu_pd(o4);
    if (!_mm256_movemask_pd(_mm256_cmp_pd(o, zero, _CMP_GT_OQ))) continue;
    std::copy(sc + u, sc + u + m, s4);
    const __m256d x = _mm256_div_pd(_mm256_xor_pd(_mm256_mul_pd(o, o), sign),
                                    vs);  // -(o * o) / sigma
    _mm256_storeu_pd(s4, _mm256_mul_pd(Sleef_expd4_u10(x),
                                       _mm256_loadu_pd(s4)));
    std::copy(s4, s4 + m, sc + u);
  }
}
#endif  // MMENS_PORTABLE

void decay(const double* ovr, double* sc, i64 n, i64 method, double iou_thr,
           double sigma) {
#ifndef MMENS_PORTABLE
  if (kHaveAvx2) return decay_avx2(ovr, sc, n, method, iou_thr, sigma);
#endif
  for (i64 u = 0; u < n; ++u) {
    const double o = ovr[u];
    if (o > 0.0)
      sc[u] = (method == 1 ? (o > iou_thr ? 1 - o : 1.0)
                           : std::exp(-(o * o) / sigma)) *
              sc[u];
  }
}

// Soft-NMS of one group (positions [s, e), packed order): see soft_nms.
// Boxes live in the scratch arrays and move with their scores on a swap.
// A box that does not overlap box i keeps its score untouched (both decays
// are exactly 1 at IoU 0), so only overlapping boxes pay for the decay.
void soft_nms_group(
    Scratch& t, i64 s, i64 e, const double* boxes, const double* sc0, i64* ix,
    double* sc, char* alive, i64 method, double iou_thr, double sigma,
    double thresh) {
  const i64 n = e - s;
  t.reserve(n);
  double *x1 = t.x1.data(), *y1 = t.y1.data(), *x2 = t.x2.data(),
         *y2 = t.y2.data(), *ar = t.area.data(), *ovr = t.iou.data();
  ix += s;
  sc += s;
  for (i64 p = 0; p < n; ++p) {
    t.set(p, boxes + 4 * ix[p]);
    sc[p] = sc0[ix[p]];
  }
  i64 q = n > 1 ? 1 : 0;  // first max of the scores after position i
  for (i64 u = 2; u < n; ++u)
    if (sc[u] > sc[q]) q = u;
  for (i64 i = 0; i + 1 < n; ++i) {
    if (sc[i] < sc[q]) {
      std::swap(sc[i], sc[q]);
      std::swap(ix[i], ix[q]);
      std::swap(x1[i], x1[q]);
      std::swap(y1[i], y1[q]);
      std::swap(x2[i], x2[q]);
      std::swap(y2[i], y2[q]);
      std::swap(ar[i], ar[q]);
    }
    const double bi[4] = {x1[i], y1[i], x2[i], y2[i]};
    // IoU(box i, box u), box i as "A": the formula is symmetric in value
    batch_iou(x1 + i + 1, y1 + i + 1, x2 + i + 1, y2 + i + 1, ar + i + 1,
              n - i - 1, bi, ar[i], 0.0, ovr + i + 1);
    decay(ovr + i + 1, sc + i + 1, n - i - 1, method, iou_thr, sigma);
    q = i + 2;  // next step's first max
    for (i64 u = i + 3; u < n; ++u)
      if (sc[u] > sc[q]) q = u;
  }
  for (i64 p = 0; p < n; ++p) alive[s + p] = sc[p] > thresh;
}

// Soft-NMS: ensemble-boxes' cpu_soft_nms_float replayed on each group (boxes
// in packed order): at step i, swap in the first box of strictly larger
// score after i, then decay the later scores by their IoU with box i.
// Returns the packed index, final position in the group and decayed score
// of every box whose decayed score is > thresh.
std::vector<at::Tensor> soft_nms(const at::Tensor& boxes_t,
                                 const at::Tensor& sc_t,
                                 const at::Tensor& labels_t,
                                 const at::Tensor& images_t,
                                 const at::Tensor& keep_t, i64 num_images,
                                 i64 method, double iou_thr, double sigma,
                                 double thresh, bool class_agnostic) {
  const Dets d =
      check_dets(boxes_t, sc_t, labels_t, images_t, keep_t, num_images);
  TORCH_CHECK(method == 1 || method == 2, "soft-NMS method must be 1 or 2");
  check_iou_thr(iou_thr);
  TORCH_CHECK(method != 2 || (sigma > 0.0 && std::isfinite(sigma)),
              "sigma must be finite and > 0, got ", sigma);
  TORCH_CHECK(!std::isnan(thresh), "thresh must not be NaN");
  const double *boxes = d.boxes, *sc0 = d.scores;
  const Layout lay = build_layout(d.labels, d.images, d.keep, nullptr, d.m,
                                  num_images, class_agnostic);
  const i64 k = static_cast<i64>(lay.idx.size());
  const i64 ng = static_cast<i64>(lay.gfirst.size());
  PoolVec<i64> ix(lay.idx);  // packed index at each (current) position
  PoolVec<double> sc(k);
  PoolVec<char> alive(k);
#pragma omp parallel num_threads(team_size(k))
  {
    Scratch tmp;
#pragma omp for schedule(dynamic, 4)
    for (i64 gi = 0; gi < ng; ++gi)
      soft_nms_group(tmp, lay.gstart[gi], lay.gstart[gi + 1], boxes, sc0,
                     ix.data(), sc.data(), alive.data(), method, iou_thr,
                     sigma, thresh);
  }
  i64 nout = 0;
  for (i64 p = 0; p < k; ++p) nout += alive[p];
  at::Tensor sel = pooled_empty({nout}, at::kLong);
  at::Tensor rank = pooled_empty({nout}, at::kLong);
  at::Tensor dec = pooled_empty({nout}, at::kDouble);
  i64* psel = sel.data_ptr<i64>();
  i64* prank = rank.data_ptr<i64>();
  double* pdec = dec.data_ptr<double>();
  i64 r = 0;
  for (i64 gi = 0; gi < ng; ++gi)
    for (i64 p = lay.gstart[gi]; p < lay.gstart[gi + 1]; ++p)
      if (alive[p]) {
        psel[r] = ix[p];
        prank[r] = p - lay.gstart[gi];
        pdec[r++] = sc[p];
      }
  return {sel, rank, dec};
}

}  // namespace

// The list API's packer, in pack_lists.cpp.
py::object pack_lists(py::handle images);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mmens compiled CPU fusion kernels (see mmens/ops/kernel.py)";
  m.def("wbf", &wbf, py::call_guard<py::gil_scoped_release>());
  m.def("nmw", &leader_op<nmw>, py::call_guard<py::gil_scoped_release>());
  m.def("nms", &leader_op<nms>, py::call_guard<py::gil_scoped_release>());
  m.def("soft_nms", &soft_nms, py::call_guard<py::gil_scoped_release>());
  m.def("pack_lists", &pack_lists);  // reads Python objects: keeps the GIL
}
