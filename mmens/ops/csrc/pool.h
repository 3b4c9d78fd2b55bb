// A cache of the large buffers of the fusion kernels and the list API's
// packer (mmens/ops/csrc/fusion_cpu.cpp, pack_lists.cpp), kept between calls.
//
// Why: one weighted_boxes_fusion_batch call on 500 images x 5 members x 100
// boxes allocates ~40 MB in buffers of 0.25-8 MB (packed input, the kernel's
// layout and clusters, the outputs). glibc hands such buffers back to the
// system when they are freed (munmap, or a trim of the heap's top), and the
// next call faults every page in again: ~5,000 minor page faults per call,
// a fifth of its time (docs/benchmarks.md). Telling glibc to keep them
// (mallopt, MALLOC_* variables) would change the allocator of the whole
// process, so the extension keeps its own freed large buffers instead and
// hands them out again.
//
// Bounded: at most kCacheBytes of free buffers are kept (the least recently
// freed go first); buffers in use are the caller's, as with any allocator.
// Thread-safe: one mutex, held only to pick or file a buffer (never across
// a malloc or free, a Python call or an OpenMP region); fork-safe: the mutex
// is taken around fork (pthread_atfork), so a child never inherits it locked.
// Tensors from pooled_empty are plain CPU tensors (resizable, storage freed
// into the cache when the last reference goes, from any thread).
#pragma once

#include <ATen/EmptyTensor.h>
#include <torch/extension.h>

#include <pthread.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace mmens {

class BlockPool {
 public:
  // Buffers of fewer bytes are plain malloc (glibc keeps them in its heap).
  static constexpr size_t kMinBytes = size_t(64) << 10;
  // Free bytes the cache holds at most.
  static constexpr size_t kCacheBytes = size_t(64) << 20;
  // Header before the data: its capacity; 64 bytes keep the data aligned as
  // c10's CPU allocator does.
  static constexpr size_t kHeader = 64;
  // Buffers of this many bytes or more are 2 MiB-aligned huge-page candidates.
  static constexpr size_t kHuge = size_t(2) << 20;

  // A buffer of at least `bytes` bytes (64-byte aligned); nullptr if out of
  // memory.
  static void* take(size_t bytes) {
    const size_t cap = capacity(bytes);
    if (cap >= kMinBytes && cap <= kCacheBytes) {
      State& s = state();
      std::lock_guard<std::mutex> lock(s.mu);
      // best fit among the cached buffers, wasting at most half of one
      auto best = s.free.end();
      for (auto it = s.free.begin(); it != s.free.end(); ++it)
        if (it->first >= cap && it->first <= 2 * cap &&
            (best == s.free.end() || it->first < best->first))
          best = it;
      if (best != s.free.end()) {
        void* data = best->second;
        s.cached -= best->first;
        s.free.erase(best);
        return data;
      }
    }
    void* block = nullptr;
    if (cap >= kHuge) {
      // huge pages where the system grants them on request (THP
      // "madvise"): the kernels read these buffers in rank order, i.e.
      // scattered, and 4 KiB pages miss the TLB
      const size_t len = (kHeader + cap + kHuge - 1) / kHuge * kHuge;
      if (posix_memalign(&block, kHuge, len) != 0) return nullptr;
      madvise(block, len, MADV_HUGEPAGE);  // a hint: failure changes nothing
    } else if (posix_memalign(&block, kHeader, kHeader + cap) != 0) {
      return nullptr;
    }
    *static_cast<size_t*>(block) = cap;
    return static_cast<char*>(block) + kHeader;
  }

  // Gives back a buffer of take() (nullptr: nothing): cached, or freed.
  static void give(void* data) {
    if (data == nullptr) return;
    void* block = static_cast<char*>(data) - kHeader;
    const size_t cap = *static_cast<size_t*>(block);
    if (cap < kMinBytes || cap > kCacheBytes) return std::free(block);
    std::vector<void*> evicted;
    {
      State& s = state();
      std::lock_guard<std::mutex> lock(s.mu);
      s.free.emplace_front(cap, data);
      s.cached += cap;
      while (s.cached > kCacheBytes) {  // oldest first
        s.cached -= s.free.back().first;
        evicted.push_back(static_cast<char*>(s.free.back().second) - kHeader);
        s.free.pop_back();
      }
    }
    for (void* b : evicted) std::free(b);
  }

 private:
  struct State {
    std::mutex mu;
    std::list<std::pair<size_t, void*>> free;  // (capacity, data), newest first
    size_t cached = 0;
  };

  // Never destroyed: a tensor may be freed after static destructors ran.
  static State& state() {
    static State* s = [] {
      State* p = new State;
      pthread_atfork([] { state().mu.lock(); }, [] { state().mu.unlock(); },
                     [] { state().mu.unlock(); });
      return p;
    }();
    return *s;
  }

  // Capacity of a request: rounded up to an eighth of its power of two (at
  // least a page), so that calls on similar loads reuse the same buffers.
  static size_t capacity(size_t bytes) {
    size_t step = 4096;
    while (step * 16 <= bytes) step *= 2;
    return (bytes + step - 1) / step * step;
  }
};

// The allocator of the kernels' large temporaries (std::vector<T, PoolAlloc>).
template <typename T>
struct PoolAlloc {
  using value_type = T;
  PoolAlloc() = default;
  template <typename U>
  PoolAlloc(const PoolAlloc<U>&) {}
  T* allocate(size_t n) {
    void* p = BlockPool::take(n * sizeof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { BlockPool::give(p); }
  // resize() default-initialises (no zeroing of buffers every element of
  // which the kernels write before reading: a memset of ~16 MB per call)
  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <typename U>
  bool operator==(const PoolAlloc<U>&) const { return true; }
  template <typename U>
  bool operator!=(const PoolAlloc<U>&) const { return false; }
};

template <typename T>
using PoolVec = std::vector<T, PoolAlloc<T>>;

// The c10 allocator of pooled_empty's storages.
class PoolAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    void* p = n ? BlockPool::take(n) : nullptr;
    TORCH_CHECK_WITH(OutOfMemoryError, n == 0 || p != nullptr,
                     "mmens: out of memory allocating ", n, " bytes");
    return {p, p, &BlockPool::give, at::Device(at::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &BlockPool::give; }
  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// at::empty(sizes, dtype) on CPU, its storage from the pool.
inline at::Tensor pooled_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  static PoolAllocator* alloc = new PoolAllocator;  // never destroyed
  return at::detail::empty_generic(
      sizes, alloc, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
      std::nullopt);
}

}  // namespace mmens
