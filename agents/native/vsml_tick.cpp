// Fused CPU ticks of VSML sub-LSTMs, float32 (built and called by rulegym/agents/vsml_native.py;
// vsml_kernels.py holds the layout and the torch paths this must agree with).
//
// State h, c: [L, N, B, A], inputs A innermost. A work unit is one lifetime l and a block of 16
// consecutive inputs a. For every output b it loads the block's h and c once, runs all ticks
// of the step on them in registers and L1 (a tick of a connection reads only its own state and
// the step's fixed gate inputs), and stores them once; the [4N, connections] gates never
// reach memory.
//
// Every nonlinearity is one 2^y with the gate rows scaled on load: the i, f and o rows by
// -log2(e), so sigmoid(z) = 1 / (1 + 2^y), and the g rows by -2 log2(e), so
// tanh(z) = (1 - 2^y) / (1 + 2^y). The cell update then needs two divisions instead of five:
//   c' = f c + i tanh(g) = (c Di Dg + (1 - Eg) Df) / (Df Di Dg),   Dx = 1 + Ex,
//   h' = o tanh(c')      = (1 - Ec) / (Do (1 + Ec)),               Ec = 2^(-2 log2(e) c').
// The tick is then done stage by stage over all components (gate products, all exps, all
// cell states, all outputs): each stage is a loop of independent vector operations, so the
// long latencies of exp and divide overlap; one component's update from start to end would
// be a dependency chain of about 130 cycles.
#include <cstdint>
#include <cstring>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

namespace {

constexpr int kBlock = 16;  // connections per block (two 8-float vectors)
constexpr int kMaxN = 32;   // largest state size the kernel takes
constexpr int kMaxM = 64;   // largest message size the kernel takes
constexpr float kLog2e = 1.44269504088896341f;
// 2^y is evaluated for y clamped to +-kExpRange: products of three (1 + 2^y) stay finite,
// and a sigmoid changes by at most 2^-40.
constexpr float kExpRange = 40.0f;

inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }

// max(lo, y) and min(hi, y) that keep a NaN y (one instruction each with AVX)
#if defined(__AVX__)
inline v8 vmax(v8 lo, v8 y) { return (v8)_mm256_max_ps((__m256)lo, (__m256)y); }
inline v8 vmin(v8 hi, v8 y) { return (v8)_mm256_min_ps((__m256)hi, (__m256)y); }
#else
inline v8 vmax(v8 lo, v8 y) { return y < lo ? lo : y; }
inline v8 vmin(v8 hi, v8 y) { return y > hi ? hi : y; }
#endif

// 2^y: y = n + r with n an integer and |r| <= 1/2; 2^n is built in the exponent bits and 2^r
// comes from a degree-5 polynomial fitted for relative error (at most 2.2e-7 on [-1/2, 1/2],
// so the tick agrees with float32 torch to its rounding; degree 4 is 4% faster but 10x less
// accurate).
inline v8 vexp2(v8 y) {
  y = vmin(splat(kExpRange), vmax(splat(-kExpRange), y));
  // adding 1.5 * 2^23 + 127 rounds y + 127 to an integer held in the low mantissa bits
  const v8 magic = splat(12583039.0f);
  const v8 t = y + magic;
  const v8 r = y - (t - magic);
  v8 p = splat(0.0013266970636323094f);
  p = p * r + splat(0.009675459936261177f);
  p = p * r + splat(0.05550742521882057f);
  p = p * r + splat(0.24022121727466583f);
  p = p * r + splat(0.6931469440460205f);
  p = p * r + splat(1.0000001192092896f);
  return p * (v8)((v8i)t << 23);  // (n + 127) << 23 is the float 2^n
}

inline void load16(const float* p, int64_t w, v8& lo, v8& hi) {
  if (w == kBlock) {
    std::memcpy(&lo, p, sizeof(v8));
    std::memcpy(&hi, p + 8, sizeof(v8));
  } else {
    alignas(32) float buf[kBlock] = {0};
    for (int64_t k = 0; k < w; ++k) buf[k] = p[k];
    std::memcpy(&lo, buf, sizeof(v8));
    std::memcpy(&hi, buf + 8, sizeof(v8));
  }
}

inline void store16(float* p, int64_t w, v8 lo, v8 hi) {
  if (w == kBlock) {
    std::memcpy(p, &lo, sizeof(v8));
    std::memcpy(p + 8, &hi, sizeof(v8));
    return;
  }
  alignas(32) float buf[kBlock];
  std::memcpy(buf, &lo, sizeof(v8));
  std::memcpy(buf + 8, &hi, sizeof(v8));
  for (int64_t k = 0; k < w; ++k) p[k] = buf[k];
}

// the sum of the first w of the 16 lanes
inline float sum16(v8 lo, v8 hi, int64_t w) {
  alignas(32) float buf[kBlock];
  std::memcpy(buf, &lo, sizeof(v8));
  std::memcpy(buf + 8, &hi, sizeof(v8));
  float total = 0.0f;
  for (int64_t k = 0; k < w; ++k) total += buf[k];
  return total;
}

inline float gate_scale(int64_t row, int64_t n_state) {
  return row / n_state == 2 ? -2.0f * kLog2e : -kLog2e;
}

// c' of one component from its gates' 2^y values (rows j, N + j, 2N + j of e).
inline void cell_state(const v8* e, int64_t j, int64_t n_state, float clip, v8& c) {
  const v8 one = splat(1.0f);
  const v8 di = one + e[j], df = one + e[n_state + j], eg = e[2 * n_state + j];
  const v8 dig = di * (one + eg);
  v8 cn = (c * dig + (one - eg) * df) / (df * dig);
  if (clip > 0.0f) cn = vmin(splat(clip), vmax(splat(-clip), cn));
  c = cn;
}

// The ticks of the work units [unit0, unit1); kN > 0 fixes the state size at compile time,
// kN = 0 reads it from n_state.
template <int kN>
void ticks_impl(const float* h, const float* c, float* h_out, float* c_out, float* h_sum,
                const float* u, const float* w_fwd, const float* m, const float* gb,
                int64_t n_state, int64_t B, int64_t A, int64_t M, int64_t ticks, float clip,
                int64_t unit0, int64_t unit1) {
  if (kN > 0) n_state = kN;
  const int64_t blocks = (A + kBlock - 1) / kBlock;
  const int64_t G = 4 * n_state;
  alignas(32) float us[4 * kMaxN * kMaxN];  // u with its rows scaled
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < n_state; ++n) us[g * n_state + n] = u[g * n_state + n] * gate_scale(g, n_state);
  float gbs[4 * kMaxN];  // the scaled gate inputs of output b
  alignas(32) float mt[kMaxM * kBlock];  // the block's input messages, [M, 16]
  v8 ga_lo[4 * kMaxN], ga_hi[4 * kMaxN];
  v8 h_lo[kMaxN], h_hi[kMaxN], c_lo[kMaxN], c_hi[kMaxN], z_lo[4 * kMaxN], z_hi[4 * kMaxN];
  const v8 one = splat(1.0f);
  for (int64_t unit = unit0; unit < unit1; ++unit) {
    const int64_t l = unit / blocks;
    const int64_t blk = unit % blocks;
    const int64_t a0 = blk * kBlock;
    const int64_t w = A - a0 < kBlock ? A - a0 : kBlock;
    // the input part of the gates, W_fwd m_a, for the block's 16 inputs (scaled)
    for (int64_t k = 0; k < M; ++k) {
      for (int64_t i = 0; i < kBlock; ++i) mt[k * kBlock + i] = i < w ? m[(l * A + a0 + i) * M + k] : 0.0f;
    }
    for (int64_t g = 0; g < G; ++g) {
      v8 lo = splat(0.0f), hi = splat(0.0f);
      for (int64_t k = 0; k < M; ++k) {
        v8 m_lo, m_hi;
        std::memcpy(&m_lo, mt + k * kBlock, sizeof(v8));
        std::memcpy(&m_hi, mt + k * kBlock + 8, sizeof(v8));
        lo += w_fwd[g * M + k] * m_lo;
        hi += w_fwd[g * M + k] * m_hi;
      }
      const float scale = gate_scale(g, n_state);
      ga_lo[g] = lo * scale;
      ga_hi[g] = hi * scale;
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t g = 0; g < G; ++g) gbs[g] = gb[(l * G + g) * B + b] * gate_scale(g, n_state);
      for (int64_t n = 0; n < n_state; ++n) {
        const int64_t off = ((l * n_state + n) * B + b) * A + a0;
        load16(h + off, w, h_lo[n], h_hi[n]);
        load16(c + off, w, c_lo[n], c_hi[n]);
      }
      for (int64_t t = 0; t < ticks; ++t) {
        // gate products, four rows at a time (8 independent accumulators)
        for (int64_t j = 0; j < G; j += 4) {
          v8 a0 = ga_lo[j] + gbs[j], a1 = ga_hi[j] + gbs[j];
          v8 b0 = ga_lo[j + 1] + gbs[j + 1], b1 = ga_hi[j + 1] + gbs[j + 1];
          v8 c0 = ga_lo[j + 2] + gbs[j + 2], c1 = ga_hi[j + 2] + gbs[j + 2];
          v8 d0 = ga_lo[j + 3] + gbs[j + 3], d1 = ga_hi[j + 3] + gbs[j + 3];
          const float* ua = us + j * n_state;
          const float* ub = ua + n_state;
          const float* uc = ub + n_state;
          const float* ud = uc + n_state;
          for (int64_t n = 0; n < n_state; ++n) {
            const v8 x0 = h_lo[n], x1 = h_hi[n];
            a0 += ua[n] * x0; a1 += ua[n] * x1;
            b0 += ub[n] * x0; b1 += ub[n] * x1;
            c0 += uc[n] * x0; c1 += uc[n] * x1;
            d0 += ud[n] * x0; d1 += ud[n] * x1;
          }
          z_lo[j] = a0; z_hi[j] = a1;
          z_lo[j + 1] = b0; z_hi[j + 1] = b1;
          z_lo[j + 2] = c0; z_hi[j + 2] = c1;
          z_lo[j + 3] = d0; z_hi[j + 3] = d1;
        }
        for (int64_t k = 0; k < G; ++k) {
          z_lo[k] = vexp2(z_lo[k]);
          z_hi[k] = vexp2(z_hi[k]);
        }
        for (int64_t j = 0; j < n_state; ++j) {
          cell_state(z_lo, j, n_state, clip, c_lo[j]);
          cell_state(z_hi, j, n_state, clip, c_hi[j]);
          // the i row is used up: it now holds the exponent of tanh(c')
          z_lo[j] = c_lo[j] * splat(-2.0f * kLog2e);
          z_hi[j] = c_hi[j] * splat(-2.0f * kLog2e);
        }
        for (int64_t j = 0; j < n_state; ++j) {
          const v8 el = vexp2(z_lo[j]), eh = vexp2(z_hi[j]);
          h_lo[j] = (one - el) / ((one + z_lo[3 * n_state + j]) * (one + el));
          h_hi[j] = (one - eh) / ((one + z_hi[3 * n_state + j]) * (one + eh));
        }
      }
      for (int64_t n = 0; n < n_state; ++n) {
        const int64_t off = ((l * n_state + n) * B + b) * A + a0;
        store16(h_out + off, w, h_lo[n], h_hi[n]);
        store16(c_out + off, w, c_lo[n], c_hi[n]);
        if (h_sum != nullptr) h_sum[((l * n_state + n) * B + b) * blocks + blk] = sum16(h_lo[n], h_hi[n], w);
      }
    }
  }
}

}  // namespace

extern "C" {

int vsml_native_max_state() { return kMaxN; }

// `ticks` ticks of all L * ceil(A / 16) work units on `threads` OpenMP threads. The library
// links libgomp by soname, so in a process that has loaded torch these are torch's own
// intra-op threads, not a second pool competing for the cores.
// h, c, h_out, c_out: [L, N, B, A]; u [4N, N]; w_fwd [4N, M]; m [L, A, M] the forward messages
// arriving at the inputs; gb [L, 4N, B] the backward messages' part of the gates with the
// bias. Gate order (i, f, g, o), all unscaled. clip <= 0: no clipping. h_out/c_out may alias
// h/c.
// h_sum (may be null) receives the new h summed over each unit's inputs: [L, N, B, ceil(A/16)],
// from which the forward message's mean over inputs follows without reading h again.
// Returns 0, or -1 if N is outside [1, 32] or M outside [1, 64].
int vsml_ticks_f32(const float* h, const float* c, float* h_out, float* c_out, float* h_sum,
                   const float* u, const float* w_fwd, const float* m, const float* gb,
                   int64_t L, int64_t N, int64_t B, int64_t A, int64_t M, int64_t ticks,
                   float clip, int64_t threads) {
  if (N > kMaxN || N < 1 || M > kMaxM || M < 1) return -1;
  const int64_t units = L * ((A + kBlock - 1) / kBlock);
  if (threads > units) threads = units;
  if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads)
  {
    int64_t t = 0, nt = 1;
#if defined(_OPENMP)
    t = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    const int64_t unit0 = units * t / nt, unit1 = units * (t + 1) / nt;
    if (N == 16) {
      ticks_impl<16>(h, c, h_out, c_out, h_sum, u, w_fwd, m, gb, N, B, A, M, ticks, clip, unit0,
                     unit1);
    } else {
      ticks_impl<0>(h, c, h_out, c_out, h_sum, u, w_fwd, m, gb, N, B, A, M, ticks, clip, unit0,
                    unit1);
    }
  }
  return 0;
}

}  // extern "C"
