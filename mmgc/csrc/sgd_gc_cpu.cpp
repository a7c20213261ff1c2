// One SGD (+ momentum) step with Gradient Centralization for a list of CPU
// tensors, in one OpenMP region and one pass over memory.
//
// Built and loaded at first use by mmgc/ops/cpu_kernel.py (plain C ABI, no
// torch headers, so it compiles in about a second). Each tensor is viewed as
// (A, O, B) with O its output-unit dim: output unit o owns the M = A * B
// elements {a * O * B + o * B + b}. A centralized unit is visited twice:
//
//   pass 1 (from memory): r = s * g + wd * w  (s = -1 when maximizing),
//     sum += r, and, with momentum, buf = mu * buf + k * r (k = 1 - dampening,
//     or buf = r on the first step, k = 1);
//   pass 2 (from cache): mean = sum / M; buf -= k * mean, which leaves
//     buf = mu * buf_old + k * (r - mean) = mu * buf_old + k * P r; then
//     w -= lr * buf (Nesterov: lr * ((r - mean) + mu * buf)).
//
// So the step reads w, g, buf from memory and writes w, buf once, as torch's
// fused SGD does; pass 2 touches only the unit's elements, still in cache.
// Without momentum, pass 1 only sums. Tensors that are not centralized get
// torch's SGD update on chunks of elements. With decoupled decay (SGDW) the
// decay is not in r (wd = 0 there) and the weight update is
// w = shrink * w - lr * d, shrink = 1 - lr * wd, from the weight before the
// step. Means are summed in double; the
// update is computed in the tensor's type, as torch's fused kernel does. A
// unit with a single input (M = 1) gets the exact zero direction its
// projection gives.

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int32_t kCenter = 1;      // centralize this tensor
constexpr int32_t kInitBuffer = 2;  // first momentum step: buf = d
constexpr int64_t kChunk = 1 << 15;  // elements per work item (about)

struct Hyper {
  double lr, momentum, dampening, wd, sign, shrink;
  bool nesterov, decoupled;
};

// The weight after its step: w - lr * d, or shrink * w - lr * d (decoupled).
template <typename C>
inline C step_weight(C w, C lr_d, bool decoupled, C shrink) {
  return (decoupled ? shrink * w : w) - lr_d;
}

struct Item {
  int64_t tensor;  // index into the lists
  int64_t begin;   // first unit (centralized) or element (plain)
  int64_t end;     // one past the last
};

// Arithmetic type of the update: the tensor's own (float32 math for float32
// tensors, as torch's fused kernel does; double would make the step
// compute-bound). Means are always summed in double.
template <typename T>
using Compute = T;

// The update of n contiguous elements, d = s * g + wd * w - shift, or d = 0
// (ZERO: a unit with one input, whose projection is exactly zero).
template <typename T, bool ZERO>
inline void update_span_impl(T* __restrict w, const T* __restrict g,
                             T* __restrict buf, int64_t n, Compute<T> shift,
                             const Hyper& h, bool init) {
  using C = Compute<T>;
  const C s = h.sign, wd = h.wd, lr = h.lr, mu = h.momentum;
  const C keep = 1.0 - h.dampening;
  const C shrink = h.shrink;
  const bool nesterov = h.nesterov, dec = h.decoupled;
  if (h.momentum == 0.0) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const C d = ZERO ? C(0) : (s * g[i] + wd * w[i]) - shift;
      w[i] = step_weight<C>(w[i], lr * d, dec, shrink);
    }
  } else if (init) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const C d = ZERO ? C(0) : (s * g[i] + wd * w[i]) - shift;
      buf[i] = d;
      w[i] = step_weight<C>(w[i], lr * (nesterov ? d + mu * d : d), dec, shrink);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const C d = ZERO ? C(0) : (s * g[i] + wd * w[i]) - shift;
      const C b = mu * buf[i] + keep * d;
      buf[i] = b;
      w[i] = step_weight<C>(w[i], lr * (nesterov ? d + mu * b : b), dec, shrink);
    }
  }
}

template <typename T>
inline void update_span(T* w, const T* g, T* buf, int64_t n, Compute<T> shift,
                        const Hyper& h, bool init, bool zero) {
  if (zero) {
    update_span_impl<T, true>(w, g, buf, n, shift, h, init);
  } else {
    update_span_impl<T, false>(w, g, buf, n, shift, h, init);
  }
}

// Sum of s * g + wd * w over n elements, in double (momentum 0: the update
// pass reads the unit again from cache).
template <typename T>
inline double span_sum(const T* __restrict w, const T* __restrict g, int64_t n,
                       const Hyper& h) {
  using C = Compute<T>;
  const C s = h.sign, wd = h.wd;
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    acc += s * g[i] + wd * w[i];
  }
  return acc;
}

// Pass 1 with momentum: buf = mu * buf + k * r (first step: buf = r), with
// r = s * g + wd * w; returns the sum of r, in double.
template <typename T>
inline double momentum_pass(const T* __restrict w, const T* __restrict g,
                            T* __restrict buf, int64_t n, const Hyper& h,
                            bool init) {
  using C = Compute<T>;
  const C s = h.sign, wd = h.wd, mu = h.momentum;
  const C keep = 1.0 - h.dampening;
  double acc = 0.0;
  if (init) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
      const C r = s * g[i] + wd * w[i];
      acc += r;
      buf[i] = r;
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
      const C r = s * g[i] + wd * w[i];
      acc += r;
      buf[i] = mu * buf[i] + keep * r;
    }
  }
  return acc;
}

// Pass 2 with momentum: buf -= k * mean, then the weight update.
template <typename T>
inline void shift_pass(T* __restrict w, const T* __restrict g, T* __restrict buf,
                       int64_t n, Compute<T> mean, const Hyper& h, bool init) {
  using C = Compute<T>;
  const C s = h.sign, wd = h.wd, lr = h.lr, mu = h.momentum;
  const C shift = init ? mean : C(1.0 - h.dampening) * mean;
  const C shrink = h.shrink;
  const bool dec = h.decoupled;
  if (h.nesterov) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const C d = (s * g[i] + wd * w[i]) - mean;
      const C b = buf[i] - shift;
      buf[i] = b;
      w[i] = step_weight<C>(w[i], lr * (d + mu * b), dec, shrink);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const C b = buf[i] - shift;
      buf[i] = b;
      w[i] = step_weight<C>(w[i], lr * b, dec, shrink);
    }
  }
}

template <typename T>
int step(int64_t n, void* const* params, void* const* grads, void* const* bufs,
         const int64_t* shapes, const int32_t* flags, const Hyper& h,
         int num_threads) {
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t a = shapes[3 * t], o = shapes[3 * t + 1], b = shapes[3 * t + 2];
    const int64_t numel = a * o * b;
    if (numel == 0) continue;
    total += numel;
    if (flags[t] & kCenter) {
      const int64_t per = std::max<int64_t>(1, kChunk / (a * b));
      for (int64_t u = 0; u < o; u += per) items.push_back({t, u, std::min(o, u + per)});
    } else {
      for (int64_t e = 0; e < numel; e += kChunk)
        items.push_back({t, e, std::min(numel, e + kChunk)});
    }
  }
  const int64_t count = static_cast<int64_t>(items.size());
  const bool parallel = num_threads > 1 && total > 4 * kChunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (parallel)
  for (int64_t k = 0; k < count; ++k) {
    const Item it = items[k];
    const int64_t t = it.tensor;
    T* w = static_cast<T*>(params[t]);
    const T* g = static_cast<const T*>(grads[t]);
    T* buf = h.momentum != 0.0 ? static_cast<T*>(bufs[t]) : nullptr;
    const bool init = flags[t] & kInitBuffer;
    if (!(flags[t] & kCenter)) {
      const int64_t e = it.begin;
      update_span(w + e, g + e, buf ? buf + e : nullptr, it.end - e, T(0), h, init, false);
      continue;
    }
    const int64_t a_n = shapes[3 * t], o_n = shapes[3 * t + 1], b_n = shapes[3 * t + 2];
    const bool zero = a_n * b_n == 1;
    const double inv_m = 1.0 / static_cast<double>(a_n * b_n);
    if (buf != nullptr && !zero) {
      for (int64_t o = it.begin; o < it.end; ++o) {
        double sum = 0.0;
        for (int64_t a = 0; a < a_n; ++a) {
          const int64_t off = (a * o_n + o) * b_n;
          sum += momentum_pass(w + off, g + off, buf + off, b_n, h, init);
        }
        const T mean = static_cast<T>(sum * inv_m);
        for (int64_t a = 0; a < a_n; ++a) {
          const int64_t off = (a * o_n + o) * b_n;
          shift_pass(w + off, g + off, buf + off, b_n, mean, h, init);
        }
      }
      continue;
    }
    for (int64_t o = it.begin; o < it.end; ++o) {
      double sum = 0.0;
      if (!zero) {
        for (int64_t a = 0; a < a_n; ++a) {
          const int64_t off = (a * o_n + o) * b_n;
          sum += span_sum(w + off, g + off, b_n, h);
        }
      }
      const T mean = static_cast<T>(sum * inv_m);
      for (int64_t a = 0; a < a_n; ++a) {
        const int64_t off = (a * o_n + o) * b_n;
        update_span(w + off, g + off, buf ? buf + off : nullptr, b_n, mean, h, init, zero);
      }
    }
  }
  return 0;
}

}  // namespace

extern "C" {

// Abi version, checked by the loader.
int mmgc_sgd_gc_abi_version() { return 3; }

// params, grads, bufs: n pointers to contiguous tensors of the same shape, all
// float64 (is_double) or all float32 (bufs ignored when momentum == 0);
// shapes: n x (A, O, B); flags: n x (kCenter | kInitBuffer); decoupled:
// weight_decay shrinks the weight (SGDW) instead of entering the direction.
// Returns 0.
int mmgc_sgd_gc_step(int64_t n, int is_double, void* const* params,
                     void* const* grads, void* const* bufs,
                     const int64_t* shapes, const int32_t* flags, double lr,
                     double momentum, double dampening, double weight_decay,
                     int nesterov, int maximize, int decoupled,
                     int num_threads) {
  const Hyper h{lr, momentum, dampening, decoupled ? 0.0 : weight_decay,
                maximize ? -1.0 : 1.0, 1.0 - lr * weight_decay,
                nesterov != 0, decoupled != 0};
  if (is_double)
    return step<double>(n, params, grads, bufs, shapes, flags, h, num_threads);
  return step<float>(n, params, grads, bufs, shapes, flags, h, num_threads);
}

}  // extern "C"
