// Fused 4-bit GEMV for one or two rows of x (decode): out[n, o] = Σ_i x[n, i] · W[o, i] with W in NF4/FP4
// blocks, reading each packed byte once, on the tensor cores.
//
// A warp owns 16 output rows and walks them in steps of 256 weights (8 chunks of 32 codes, 16 packed bytes
// each; a chunk never straddles a quantization block). Lane (r, c) = (lane / 8, lane % 8) loads chunk c of
// rows 4j + r, j = 0..3, so each load instruction reads whole 128-byte lines of 4 rows (the layout before,
// half lines of 8 rows per instruction, cost 0.4 us more at 14336x4096; half lines of 8 rows without the
// pairing were 40% slower still).
// One mma.m16n8k16 (bf16 in, f32 accumulate) takes 16 weights of each of its 16 rows: k slots 2q, 2q + 1,
// 2q + 8 and 2q + 9 of MMA row m come from bytes 2t and 2t + 1 of the chunk that lane 4 · (m % 8) + q holds
// (any order of k works as long as x follows it), so eight MMAs consume a chunk per lane, and two MMA sets
// of 8 rows each cover the warp's 16. Each packed byte becomes the (code[hi], code[lo]) bf16 pair the A
// fragment wants with one PRMT (the byte and the lane form the shared-memory address) and one load from a
// 256-entry pair table of which every lane has its own bank (conflict-free). step_sum says how the B
// operand (x) picks each lane's chunk sum out of the products. When the two chunks of a lane pair (c even,
// c + 1) always share a quantization block (blocks of 64 weights or more, I % 64 == 0), the pair first
// adds its chunk sums with one shuffle per two rows (the even lane keeps rows 0 and 1 of its four, the odd
// lane rows 2 and 3) and each lane loads and applies the absmax of two rows, not four: the absmax loads
// are half as many (with double quant each is three: the 8-bit code, the nested absmax and the nested
// code book); in the full bench that took 0.3-0.5 us off the double-quant GEMV at 14336x4096 and
// 4096x14336, and up to 0.2 off the plain one (bench/NOTES.md, session 10). Per weight: half a PRMT, half a
// shared load and 1/32 of an MMA, against a PRMT, a lookup and an FFMA in a scalar loop.
//
// One block of 16 warps per SM owns a contiguous run of 16-row groups (balanced to one group); each warp
// takes a contiguous run of the block's steps, with the next step's packed words in flight while it sums
// one. Each warp keeps its partial row sums in shared memory; the block adds them in warp order (so the
// result does not depend on timing) and writes its rows last; for decode's gate/up (two weights whose
// groups alternate, Gemv4Args::glu_out) it also writes silu(gate) · up of the rounded rows, the swiglu
// launch after it saved (bench/NOTES.md, session 16). The L1 data pipe (the
// lookups, then the loads) is the busiest unit; bench/NOTES.md has the profiles and what the rest of the
// time is (mostly the start: the wait for x, which returns only after the weight loads issued before it, so
// for long x the kernel loads x first; and the first DRAM round trip, which a programmatic dependent launch
// overlaps with the kernel before when the weights may be read early). The weights enter as bf16(code) (the
// absmax multiplies the f32 partial sums), so each weight carries one bf16 rounding, as in the dequantize +
// GEMM path.
#include <vector>

#include "core/cuda_pdl.cuh"
#include "core/row_norm.cuh"
#include "core/silu_mul.cuh"
#include "quant/cuda/quant_device.cuh"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kWarps = 16, kThreads = kWarps * 32;
// What a block loads first. The kernel is a programmatic dependent launch: its blocks start while the
// kernel before finishes, build the table, and wait for that kernel before loading x (bench/RESULTS.md,
// session 9, in a CUDA graph: 14336x4096 12.2 us instead of 13.7, 4096x14336 12.3 instead of 13.2).
//   kWeightsEarly: the first two steps' weights before the wait (the caller says no kernel that may still
//                  run writes them), then x.
//   kWeightsFirst: after the wait the first two steps' weights, then x behind them.
//   kXFirst: after the wait x, then the weights; x returns before them instead of with them.
enum class Order { kWeightsEarly, kWeightsFirst, kXFirst };
// x pieces (16 bytes) per thread held in registers while the table is built, when x goes first; the rest of
// a longer x is loaded after.
constexpr int kXRegs = 8;
// x goes first for rows longer than this, except that plain-absmax weights that may be read early go early
// (bench/NOTES.md, sessions 8 and 9, in a CUDA graph at 4096x14336: x first 12.8 us, nested absmax 12.3;
// weights early 12.7, nested 12.8. At 4096x4096 x first is slower).
constexpr int kXFirstAbove = 4096;
// The pair table: row b (the packed byte) is 256 bytes, of which lane l uses the word at 4 · l. It starts
// at a shared address with zero low 16 bits (the kernel skips up to kTableAlign bytes to find one), so one
// PRMT forms a lookup's whole address: the byte as bits 8..15, 4 · lane as bits 0..7, the base above.
constexpr int kTableBytes = 256 * 256, kTableAlign = 65536;

// One launch may cover up to kMaxParts weights that share x (q/k/v, gate/up): their 16-row groups are
// numbered one after the other, and each step looks up the part its group belongs to. The part's fields are
// picked by index with selects (QT_PICK), so the parameters are never indexed dynamically (that would copy
// them to local memory). Those lookups cost 0.5-2.4 us at 14336x4096 and 4096x14336 when every launch pays
// them, and a parameter block sized for three parts 0.1-0.15 us per launch, so one weight (P = 1) is a
// kernel of its own whose parameters hold one part, the constant 0. Two weights of equal O (P = 2: gate
// and up) take their groups in turns, group G being group G / 2 of part G % 2, so a block holds the same
// rows of both and can apply the SwiGLU to them (Gemv4Args::glu_out).
constexpr int kMaxParts = kGemv4MaxParts;

struct Gemv4Part {
  const uint4* packed;  // [O, nchunk] chunks of 32 codes
  Absmax4View am;
  void* out;         // [NR, O]
  const void* bias;  // [O] or null
  int bias_kind;
  int O;
  int group0;  // its first group in the launch's numbering
};

template <int P>  // parts the parameters hold: 1, 2 (in turns) or kMaxParts (one after the other)
struct Gemv4Params {
  Gemv4Part part[P];
  int parts;
  int lg_chunks_per_block;  // log2(blocksize / 32)
  float code[16];
  const __nv_bfloat16* x;  // [NR, I]
  // kNorm (NR = 1): the input is rmsnorm(x + x_add) · norm_w; block 0 writes x + x_add to res_out.
  const __nv_bfloat16 *x_add, *norm_w;
  __nv_bfloat16* res_out;
  float norm_eps;
  int out_kind;
  __nv_bfloat16* glu_out;  // P = 2: silu(out0) · out1, [NR, O]
  int I, nchunk;
  int steps;             // per row: ceil(nchunk / 8)
  int groups;            // all parts' ceil(O / 16)
  int groups_per_block;  // the block's run of 16-row groups
};

template <int P, class F>
__device__ __forceinline__ auto pick_part(const Gemv4Params<P>& p, int j, F field) {
  if constexpr (P == 1) {
    return field(p.part[0]);
  } else if constexpr (P == 2) {
    return j == 0 ? field(p.part[0]) : field(p.part[1]);
  } else {
    static_assert(P == 3, "pick_part: 1, 2 or 3 parts");
    return j == 0 ? field(p.part[0]) : j == 1 ? field(p.part[1]) : field(p.part[2]);
  }
}
#define QT_PICK(p, j, field) pick_part(p, j, [](const Gemv4Part& w_) { return w_.field; })

// The part that group G belongs to.
template <int P>
__device__ __forceinline__ int part_of(const Gemv4Params<P>& p, int G) {
  if constexpr (P == 1) return 0;
  if constexpr (P == 2) return G & 1;
  return (p.parts > 1 && G >= p.part[1].group0) + (p.parts > 2 && G >= p.part[2].group0);
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The pair for byte k of word w: base_lane = the table's shared address | 4 · lane.
__device__ __forceinline__ uint32_t pair_of(uint32_t w, uint32_t base_lane, int k) {
  uint32_t v;
  asm("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(__byte_perm(w, base_lane, 0x7604 | (k << 4))));
  return v;
}

// x is staged in shared memory once per block (x rows 2I + 64 bytes apart); within a chunk the 16-byte
// piece k of chunk c sits at slot (k + c / 2) % 4. The eight lanes that read x in one instruction take piece
// k of the eight chunks of one step: without the rotation the even chunks would share banks, and so would
// the odd ones.
__host__ __device__ inline int x_stage_row(int I) {
  return 2 * I + 64;
}
__device__ __forceinline__ int x_stage_offset(int c, int k) {
  return 16 * (4 * c + ((k + (c >> 1)) & 3));
}

// One step of one warp: lane (r, c) = (lane / 8, lane % 8) loads chunk c of rows 4j + r, j = 0..3, so each
// load instruction reads whole 128-byte lines of 4 rows (zeros past a row or the matrix), with the absmax
// (the plain value, or the 8-bit code and the nested absmax) of its chunk in each row, or with kPair (the
// lane pair shares blocks) of its chunk in the two rows it keeps: j = 2 · (c % 2) + jj, jj = 0, 1.
template <bool kNested, bool kPair>
struct Step {
  static constexpr int kScales = kPair ? 2 : 4;
  uint4 w[4];  // rows 4j + r of the warp's 16
  float a[kScales];
  uint32_t c[kScales];

  // part: the weight; row: the lane's first row in it.
  template <class Params>
  __device__ __forceinline__ void load(const Params& p, int part, int row, int ch) {
    load_set(p, part, row, ch, 0);
    load_set(p, part, row, ch, 1);
    load_scales(p, part, row, ch);
  }
  // The packed words of MMA set P: rows 4j + r, j = 2P, 2P + 1.
  template <class Params>
  __device__ __forceinline__ void load_set(const Params& p, int part, int row, int ch, int P) {
    // 32-bit chunk indices: gemv_4bit_cuda checks (O + 16) · I / 32 < 2^31.
    const bool in_row = ch < p.nchunk;
    const uint4* packed = QT_PICK(p, part, packed);
    const int O = QT_PICK(p, part, O);
#pragma unroll
    for (int j = 2 * P; j < 2 * P + 2; j++) {
      const int r = row + 4 * j;
      w[j] = in_row && r < O ? __ldcs(packed + r * p.nchunk + ch) : make_uint4(0, 0, 0, 0);
    }
  }
  template <class Params>
  __device__ __forceinline__ void load_scales(const Params& p, int part, int row, int ch) {
    const bool in_row = ch < p.nchunk;
    const int O = QT_PICK(p, part, O);
#pragma unroll
    for (int s = 0; s < kScales; s++) {
      const int r = row + 4 * (kPair ? 2 * (ch & 1) + s : s);
      const bool in = in_row && r < O;
      const int blk = (r * p.nchunk + ch) >> p.lg_chunks_per_block;
      if (kNested) {
        c[s] = in ? QT_PICK(p, part, am.qabsmax)[blk] : 0;
        a[s] = in ? __ldg(QT_PICK(p, part, am.nested_absmax) + (blk >> 8)) : 0.0f;
      } else {
        a[s] = in ? __ldg(QT_PICK(p, part, am.absmax) + blk) : 0.0f;
      }
    }
  }
};

// acc[n][j] (x row n; row 4j + r) += the lane's chunk of the step times its absmax; with kPair acc[n][jj]
// (row 4 · (2 · (c % 2) + jj) + r) += the lane pair's two chunks times their absmax. ch: the lane's chunk.
// With g = lane / 4 and q = lane % 4: MMA row m of set P = 0, 1 is row 4 · (2P + m / 8) + m % 8 / 2, and
// lane 4 · (m % 8) + q holds chunk 4 · (m % 2) + q of it; so rows of both parities share a k slot but not
// its chunk. The B operand is zero except in column 2q + p, which holds x at chunk 4p + q (fed by lane
// 4 · (2q + p) + q): result column 2q + p of MMA row m is the lane's chunk sum when p = m % 2, and the
// other column is a cross term that nothing reads. A second row of x takes a second pair of MMAs on the
// same lookups.
// The step's MMA set 0 goes first, then refill_set0() may load new words into st.w[0..1] while set 1 is
// summed: the registers of half a step are in flight again half a step earlier, so a warp has 2.5 steps
// of loads in flight instead of 2 at no register cost (bench/NOTES.md, session 10: 0.25-0.45 us at
// 14336x4096 and 4096x14336). Each set keeps two accumulator chains (even and odd t) so the set's eight
// MMAs are not one dependent chain.
// xs: x staged in shared memory (x_stage_offset has the layout); part: the step's weight (its nested code
// book is ncode[256 · part ...]).
template <int NR, bool kNested, bool kPair, class Params, class Refill>
__device__ __forceinline__ void step_sum(const Params& p, int part, Step<kNested, kPair>& st,
                                         Refill refill_set0, int ch, int lane, uint32_t base_lane,
                                         const float* ncode, const char* xs,
                                         float (&acc)[NR][Step<kNested, kPair>::kScales]) {
  const int g = lane >> 2, q = lane & 3, par = g & 1;
  const bool has_x = (g >> 1) == q && ch < p.nchunk;
  uint4 xv[NR][4];
#pragma unroll
  for (int n = 0; n < NR; n++)
#pragma unroll
    for (int k = 0; k < 4; k++)
      xv[n][k] = has_x ? *reinterpret_cast<const uint4*>(xs + n * x_stage_row(p.I) + x_stage_offset(ch, k))
                       : make_uint4(0, 0, 0, 0);
  float d[NR][2][4], d_odd[NR][2][4];  // [x row][set][fragment], for even and odd t
#pragma unroll
  for (int n = 0; n < NR; n++)
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
      for (int e = 0; e < 4; e++) d[n][s][e] = d_odd[n][s][e] = 0.0f;
#pragma unroll
  for (int s = 0; s < 2; s++) {
#pragma unroll
    for (int t = 0; t < 8; t++) {
      const int k0 = (2 * t) & 3;
      const uint32_t wa = word_of(st.w[2 * s], t >> 1), wb = word_of(st.w[2 * s + 1], t >> 1);
      const uint32_t a0 = pair_of(wa, base_lane, k0), a1 = pair_of(wb, base_lane, k0),
                     a2 = pair_of(wa, base_lane, k0 + 1), a3 = pair_of(wb, base_lane, k0 + 1);
#pragma unroll
      for (int n = 0; n < NR; n++)
        mma_bf16(t & 1 ? d_odd[n][s] : d[n][s], a0, a1, a2, a3, word_of(xv[n][t >> 1], k0),
                 word_of(xv[n][t >> 1], k0 + 1));
    }
    if (s == 0) refill_set0();
  }
#pragma unroll
  for (int n = 0; n < NR; n++)
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
      for (int e = 0; e < 4; e++) d[n][s][e] += d_odd[n][s][e];
  auto chunk_sum = [&](int n, int j) {  // the lane's chunk sum of row 4j + r
    const float* dj = d[n][j >> 1] + 2 * (j & 1);
    return par ? dj[1] : dj[0];
  };
  const float* nc = ncode + 256 * part;
  const float offset = kNested ? QT_PICK(p, part, am.offset) : 0.0f;
#pragma unroll
  for (int s = 0; s < Step<kNested, kPair>::kScales; s++) {
    const float a = kNested ? __fadd_rn(bnb_scaled(nc[st.c[s]], st.a[s]), offset) : st.a[s];
#pragma unroll
    for (int n = 0; n < NR; n++) {
      if constexpr (kPair) {  // keep rows s and 2 + s (even lane / odd lane), send the other to the partner
        const bool odd = lane & 1;
        const float lo = chunk_sum(n, s), hi = chunk_sum(n, 2 + s);
        const float sum = (odd ? hi : lo) + __shfl_xor_sync(0xffffffffu, odd ? lo : hi, 1);
        acc[n][s] = fmaf(sum, a, acc[n][s]);
      } else {
        acc[n][s] = fmaf(chunk_sum(n, s), a, acc[n][s]);
      }
    }
  }
}

// kNorm (NR = 1): the staged input is rmsnorm(x + x_add) · norm_w (Gemv4Args::norm_w).
template <int NR, bool kNested, Order kOrder, bool kPair, int P, bool kNorm>
__global__ void __launch_bounds__(kThreads, 1) gemv4_kernel(const Gemv4Params<P> p) {
  static_assert(!kNorm || NR == 1, "gemv4_kernel: the fused norm takes one row");
  constexpr bool kMulti = P > 1;
  using StepT = Step<kNested, kPair>;
  constexpr bool kXFirst = kOrder == Order::kXFirst;
  extern __shared__ __align__(16) char smem[];
  const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(smem);
  const uint32_t pad = (0u - sbase) & 0xFFFFu;  // to the next shared address with zero low 16 bits
  char* tab = smem + pad;
  float* ncode = reinterpret_cast<float*>(tab + kTableBytes);
  // Row sums [kWarps][groups_per_block][NR][16]: each warp its own, added in warp order at the end, so the
  // result does not depend on which warp finishes first (shared atomics did: 1-ulp differences between
  // launches).
  float* part = ncode + 256 * (kMulti ? kMaxParts : 1);
  const int part_stride = p.groups_per_block * NR * 16;             // one warp's sums
  char* xs = reinterpret_cast<char*>(part + kWarps * part_stride);  // [NR] x rows, x_stage_offset
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g0 = blockIdx.x * p.groups_per_block;
  const int ng = min(p.groups_per_block, p.groups - g0);
  const int items = ng * p.steps;
  const int lrow = lane >> 3, ch0 = lane & 7;
  // The part of the block's group gl, and the lane's first row of that group within the part.
  auto part_at = [&](int gl) { return kMulti ? part_of(p, g0 + gl) : 0; };
  const int row0 = g0 * 16 + lrow;
  auto row_at = [&](int gl, int j) {
    if constexpr (P == 2) return ((g0 + gl) >> 1) * 16 + lrow;
    return kMulti ? (g0 + gl - QT_PICK(p, j, group0)) * 16 + lrow : row0 + gl * 16;
  };

  // This warp's run of the block's steps (group-major): load cursor (lgl, ls), sum cursor (cgl, cs).
  const int per = (items + kWarps - 1) / kWarps;
  const int first = warp * per, end = min(items, first + per);
  int lgl = first / p.steps, ls = first % p.steps, cgl = lgl, cs = ls;
  StepT s0, s1;
  auto load_at_cursor = [&](StepT& st) {
    const int j = part_at(lgl);
    st.load(p, j, row_at(lgl, j), ls * 8 + ch0);
  };
  auto load_first_two = [&]() {
    if (first < end) load_at_cursor(s0);
    if (++ls == p.steps) ls = 0, lgl++;
    if (first + 1 < end) load_at_cursor(s1);
    if (++ls == p.steps) ls = 0, lgl++;
  };
  const int pieces = p.I / 8;  // 16-byte pieces per x row
  auto stage_x = [&](int i, const uint4& v) {
    if (i < NR * pieces) {
      const int n = i / pieces, pc = i % pieces;
      *reinterpret_cast<uint4*>(xs + n * x_stage_row(p.I) + x_stage_offset(pc >> 2, pc & 3)) = v;
    }
  };
  // The next kernel's blocks may take this one's SMs as they free up; they stop at their wait.
  cuda::pdl_trigger();
  if constexpr (kOrder == Order::kWeightsEarly) load_first_two();

  // The pair table (words 0..31 of each row) and zeroed row sums, while the kernel before finishes.
  for (int i = threadIdx.x; i < 256 * 8; i += kThreads) {
    const int b = i >> 3;
    const uint32_t v = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(p.code[b >> 4])) |
                       ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(p.code[b & 15])) << 16);
    reinterpret_cast<uint4*>(tab + b * 256)[i & 7] = make_uint4(v, v, v, v);
  }
  for (int i = threadIdx.x; i < kWarps * part_stride; i += kThreads) part[i] = 0.0f;
  cuda::pdl_wait();

  if constexpr (kOrder == Order::kWeightsFirst) load_first_two();
  uint4 xr[kXFirst ? kXRegs : 1];
  if constexpr (kXFirst && !kNorm) {
#pragma unroll
    for (int u = 0; u < kXRegs; u++) {
      const int i = threadIdx.x + u * kThreads;
      xr[u] = i < NR * pieces ? __ldg(reinterpret_cast<const uint4*>(p.x) + i) : make_uint4(0, 0, 0, 0);
    }
  }
  if (kNested)  // the nested code books
    for (int i = threadIdx.x; i < 256 * (kMulti ? p.parts : 1); i += kThreads)
      ncode[i] = kMulti ? QT_PICK(p, i >> 8, am.nested_code)[i & 255] : p.part[0].am.nested_code[i];
  if constexpr (kNorm) {
    // add_rmsnorm's order: thread t takes the pieces t, t + Tn, ... of the row. First r = x + x_add into the
    // stage (and res_out) with its sum of squares, then the block's 1/rms, then each piece scaled in place.
    const int Tn = rmsnorm_threads(p.I);
    const bool mine = (int)threadIdx.x < Tn;
    const uint4* x4 = reinterpret_cast<const uint4*>(p.x);
    const uint4* a4 = reinterpret_cast<const uint4*>(p.x_add);
    float ss = 0.0f;
    for (int i = threadIdx.x; mine && i < pieces; i += Tn) {
      uint4 r = __ldg(x4 + i);
      if (a4) r = zip_bf16x8(r, __ldg(a4 + i), [](float u, float v) { return u + v; });
      if (p.res_out && blockIdx.x == 0) reinterpret_cast<uint4*>(p.res_out)[i] = r;
      ss = sum_squares_bf16x8(r, ss);
      stage_x(i, r);
    }
    const float rstd = block_rstd(ss, p.I, p.norm_eps);
    const uint4* w4 = reinterpret_cast<const uint4*>(p.norm_w);
    for (int i = threadIdx.x; mine && i < pieces; i += Tn) {
      uint4* slot = reinterpret_cast<uint4*>(xs + x_stage_offset(i >> 2, i & 3));
      *slot = zip_bf16x8(*slot, __ldg(w4 + i), [rstd](float u, float w) { return u * rstd * w; });
    }
  } else {
    if constexpr (kXFirst) {
#pragma unroll
      for (int u = 0; u < kXRegs; u++) stage_x(threadIdx.x + u * kThreads, xr[u]);
    }
    for (int i = threadIdx.x + (kXFirst ? kXRegs * kThreads : 0); i < NR * pieces; i += kThreads)
      stage_x(i, __ldg(reinterpret_cast<const uint4*>(p.x) + i));  // the x rows are contiguous
  }
  if constexpr (kXFirst) load_first_two();
  __syncthreads();

  const uint32_t base_lane = (sbase + pad) | (uint32_t)(lane * 4);
  float acc[NR][StepT::kScales];
#pragma unroll
  for (int n = 0; n < NR; n++)
#pragma unroll
    for (int s = 0; s < StepT::kScales; s++) acc[n][s] = 0.0f;
  int cur = -1;  // the group acc belongs to
  // The 8 lanes of row 4j + r hold its partial sums; with kPair the 4 lanes of its parity (j / 2 = c % 2).
  auto flush = [&]() {
#pragma unroll
    for (int n = 0; n < NR; n++)
#pragma unroll
      for (int s = 0; s < StepT::kScales; s++) {
        float v = acc[n][s];
        if (!kPair) v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        v += __shfl_xor_sync(0xffffffffu, v, 4);
        const int j = kPair ? 2 * (lane & 1) + s : s;
        if ((lane & (kPair ? 6 : 7)) == 0)
          part[warp * part_stride + (cur * NR + n) * 16 + 4 * j + (lane >> 3)] += v;
        acc[n][s] = 0.0f;
      }
  };
  // Sums st and, when `more`, refills it with the step at the load cursor (its set 0 during the sum).
  auto consume = [&](StepT& st, bool more) {
    if (cgl != cur) {
      if (cur >= 0) flush();
      cur = cgl;
    }
    const int lj = part_at(lgl), row = row_at(lgl, lj), ch = ls * 8 + ch0;
    step_sum<NR>(
        p, part_at(cgl), st,
        [&]() {
          if (more) st.load_set(p, lj, row, ch, 0);
        },
        cs * 8 + ch0, lane, base_lane, ncode, xs, acc);
    if (more) st.load_set(p, lj, row, ch, 1), st.load_scales(p, lj, row, ch);
    if (++cs == p.steps) cs = 0, cgl++;
    if (++ls == p.steps) ls = 0, lgl++;
  };
  // Two steps rotate by name (copying one would wait for its loads): sum one while refilling it with the
  // step after the other.
  for (int i = first; i < end; i += 2) {
    consume(s0, i + 2 < end);
    if (i + 1 >= end) break;
    consume(s1, i + 3 < end);
  }
  if (cur >= 0) flush();
  __syncthreads();
  // The row's sum over the warps' slots in warp order, plus its bias.
  auto row_sum = [&](int i, int j, int o) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) sum += part[w * part_stride + i];
    const void* bias = QT_PICK(p, j, bias);
    return bias ? sum + load_kind(bias, o, QT_PICK(p, j, bias_kind)) : sum;
  };
  if constexpr (P == 2) {
    if (p.glu_out) {  // groups 2k (gate) and 2k + 1 (up) hold the same rows (g0 is even)
      const int O = p.part[0].O;
      for (int i = threadIdx.x; i < ng / 2 * NR * 16; i += kThreads) {
        const int k = i / (NR * 16), n = (i / 16) % NR, r = i % 16;
        const int o = ((g0 >> 1) + k) * 16 + r, ig = (2 * k * NR + n) * 16 + r;
        if (o < O) {
          const __nv_bfloat16 g = __float2bfloat16_rn(row_sum(ig, 0, o)),
                              u = __float2bfloat16_rn(row_sum(ig + NR * 16, 1, o));
          reinterpret_cast<__nv_bfloat16*>(p.part[0].out)[(int64_t)n * O + o] = g;
          reinterpret_cast<__nv_bfloat16*>(p.part[1].out)[(int64_t)n * O + o] = u;
          p.glu_out[(int64_t)n * O + o] =
              __float2bfloat16_rn(silu_mul(__bfloat162float(g), __bfloat162float(u)));
        }
      }
      return;
    }
  }
  for (int i = threadIdx.x; i < ng * NR * 16; i += kThreads) {
    const int gl = i / (NR * 16), n = (i / 16) % NR, r = i % 16;
    const int j = part_at(gl), O = QT_PICK(p, j, O);
    const int o = (kMulti ? row_at(gl, j) - lrow : (g0 + gl) * 16) + r;
    if (o < O) store_kind(QT_PICK(p, j, out), (int64_t)n * O + o, p.out_kind, row_sum(i, j, o));
  }
}

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_error(ErrorKind::Cuda, "gemv_4bit_cuda: ", what, ": ", cudaGetErrorString(e));
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Dynamic shared memory: the table's alignment slack, the table, the nested code books, each warp's row
// sums of a run of gpb groups, the x stage.
size_t gemv_smem(int gpb, int rows, int I, bool multi = false) {
  return (size_t)kTableAlign + kTableBytes + (multi ? kMaxParts : 1) * 1024 +
         (size_t)kWarps * gpb * rows * 16 * 4 + (size_t)rows * x_stage_row(I);
}

// The dynamic shared memory a block may ask for: the device's opt-in per block (the current device; cached
// per device) less 256 bytes for the fused norm's static reduction slots (core/row_norm.cuh).
size_t max_dynamic_smem() {
  static int cached[64] = {};
  int dev = 0;
  cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < 0 || dev >= 64) dev = 0;
  if (!cached[dev])
    cuda_ok(cudaDeviceGetAttribute(&cached[dev], cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
            "cudaDeviceGetAttribute");
  return (size_t)cached[dev] - 256;
}

template <int NR, bool kNested, Order kOrder, bool kPair, int P, bool kNorm>
void launch(const Gemv4Params<P>& p, int blocks, size_t smem, cudaStream_t stream) {
  auto kernel = gemv4_kernel<NR, kNested, kOrder, kPair, P, kNorm>;
  static size_t set = 0;  // the largest dynamic shared memory allowed so far
  if (smem > set) {
    cuda_ok(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
            "cudaFuncSetAttribute(gemv4_kernel)");
    set = smem;
  }
  cuda_ok(cuda::launch_pdl(kernel, dim3(blocks), dim3(kThreads), smem, stream, p), "gemv4_kernel launch");
}

template <int NR, bool kNested, bool kPair, int P, bool kNorm>
void launch_order(const Gemv4Params<P>& p, Order order, int blocks, size_t smem, cudaStream_t stream) {
  switch (order) {
    case Order::kWeightsEarly:
      return launch<NR, kNested, Order::kWeightsEarly, kPair, P, kNorm>(p, blocks, smem, stream);
    case Order::kWeightsFirst:
      return launch<NR, kNested, Order::kWeightsFirst, kPair, P, kNorm>(p, blocks, smem, stream);
    case Order::kXFirst:
      return launch<NR, kNested, Order::kXFirst, kPair, P, kNorm>(p, blocks, smem, stream);
  }
}

// Several parts in one launch only with kPair (gemv_4bit_cuda_parts launches them one by one otherwise).
template <int NR, bool kNested, int P, bool kNorm = false>
void launch_pair(const Gemv4Params<P>& p, Order order, bool pair, int blocks, size_t smem,
                 cudaStream_t stream) {
  if constexpr (P > 1)
    launch_order<NR, kNested, true, P, kNorm>(p, order, blocks, smem, stream);
  else
    pair ? launch_order<NR, kNested, true, P, kNorm>(p, order, blocks, smem, stream)
         : launch_order<NR, kNested, false, P, kNorm>(p, order, blocks, smem, stream);
}

// The launch for parts that share x and layout (checked by gemv_4bit_cuda_parts), in a kernel whose
// parameters hold P parts.
template <int P>
void launch_parts(const std::vector<Gemv4Args>& parts, bool pair, cudaStream_t stream) {
  const Gemv4Args& a = parts[0];
  Gemv4Params<P> p = {};
  p.parts = (int)parts.size();
  p.groups = 0;
  for (int j = 0; j < p.parts; j++) {
    const Gemv4Args& b = parts[j];
    Gemv4Part& w = p.part[j];
    w.packed = reinterpret_cast<const uint4*>(b.packed);
    w.am = b.absmax;
    w.out = b.out;
    w.bias = b.bias;
    w.bias_kind = b.bias ? float_kind(b.bias_dtype, "gemv_4bit_cuda (bias)") : 0;
    w.O = (int)b.O;
    w.group0 = p.groups;  // unused with P = 2 (groups in turns)
    p.groups += (w.O + 15) / 16;
  }
  p.glu_out = static_cast<__nv_bfloat16*>(a.glu_out);
  p.lg_chunks_per_block = 0;
  while ((int64_t(32) << p.lg_chunks_per_block) < a.blocksize) p.lg_chunks_per_block++;
  const float* c = code4(a.quant_type);
  for (int i = 0; i < 16; i++) p.code[i] = c[i];
  p.x = static_cast<const __nv_bfloat16*>(a.x);
  p.x_add = static_cast<const __nv_bfloat16*>(a.x_add);
  p.norm_w = static_cast<const __nv_bfloat16*>(a.norm_w);
  p.res_out = static_cast<__nv_bfloat16*>(a.res_out);
  p.norm_eps = a.norm_eps;
  p.out_kind = float_kind(a.out_dtype, "gemv_4bit_cuda (out)");
  p.I = (int)a.I;
  p.nchunk = p.I / 32;
  p.steps = (p.nchunk + 7) / 8;
  int dev = 0, sms = 0;
  cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
  cuda_ok(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  // One block per SM, each a run of whole groups; the runs differ by at most one group (with P = 2 an even
  // number, so that a block holds both parts of its rows).
  const int step = P == 2 ? 2 : 1;
  p.groups_per_block = (p.groups + sms - 1) / sms;
  p.groups_per_block += p.groups_per_block % step;
  const bool multi = p.parts > 1;
  while (p.groups_per_block > step && gemv_smem(p.groups_per_block, a.rows, p.I, multi) > max_dynamic_smem())
    p.groups_per_block -= step;
  const int blocks = (p.groups + p.groups_per_block - 1) / p.groups_per_block;
  const size_t smem = gemv_smem(p.groups_per_block, a.rows, p.I, multi);
  const bool nested = a.absmax.absmax == nullptr;
  const Order order = p.I > kXFirstAbove && (nested || !a.weights_static) ? Order::kXFirst
                      : a.weights_static                                  ? Order::kWeightsEarly
                                                                          : Order::kWeightsFirst;
  if (a.norm_w)  // one row (checked by gemv_4bit_cuda_parts)
    nested ? launch_pair<1, true, P, true>(p, order, pair, blocks, smem, stream)
           : launch_pair<1, false, P, true>(p, order, pair, blocks, smem, stream);
  else if (a.rows == 1)
    nested ? launch_pair<1, true>(p, order, pair, blocks, smem, stream)
           : launch_pair<1, false>(p, order, pair, blocks, smem, stream);
  else
    nested ? launch_pair<2, true>(p, order, pair, blocks, smem, stream)
           : launch_pair<2, false>(p, order, pair, blocks, smem, stream);
}

}  // namespace

bool gemv_4bit_supported(int64_t I, const void* packed) {
  return I > 0 && I % 32 == 0 && I <= (1 << 24) && aligned16(packed) &&
         gemv_smem(1, 1, (int)I) <= max_dynamic_smem();
}

bool gemv_4bit_glu_supported(int64_t I, int64_t blocksize, int rows) {
  return I > 0 && I % 64 == 0 && I <= (1 << 24) && blocksize >= 64 && rows >= 1 && rows <= 2 &&
         gemv_smem(2, rows, (int)I, true) <= max_dynamic_smem();
}

void gemv_4bit_cuda(const Gemv4Args& a, cudaStream_t stream) {
  gemv_4bit_cuda_parts({a}, stream);
}

void gemv_4bit_cuda_parts(const std::vector<Gemv4Args>& parts, cudaStream_t stream) {
  if (parts.empty() || (int)parts.size() > kMaxParts)
    throw_error(ErrorKind::Usage, "gemv_4bit_cuda: 1 to ", kMaxParts, " weights per launch, got ",
                parts.size());
  const Gemv4Args& a = parts[0];
  for (const Gemv4Args& b : parts) {
    if (!gemv_4bit_supported(b.I, b.packed) || !aligned16(b.x))
      throw_error(ErrorKind::Usage, "gemv_4bit_cuda: needs I % 32 == 0 (got ", b.I,
                  ") and 16-byte aligned packed weights and x");
    if (b.x != a.x || b.x_add != a.x_add || b.norm_w != a.norm_w || b.norm_eps != a.norm_eps ||
        b.res_out != a.res_out || b.glu_out != a.glu_out || b.I != a.I || b.rows != a.rows ||
        b.blocksize != a.blocksize || b.quant_type != a.quant_type || b.out_dtype != a.out_dtype ||
        b.weights_static != a.weights_static || (b.absmax.absmax == nullptr) != (a.absmax.absmax == nullptr))
      throw_error(ErrorKind::Usage,
                  "gemv_4bit_cuda: the weights of one launch must share x, I, rows, block size, quant type, "
                  "output dtype, weights_static, glu_out and the absmax form (plain or nested)");
    if (b.O <= 0 || (b.O + 16) * (b.I / 32) >= ((int64_t)1 << 31))
      throw_error(ErrorKind::Usage, "gemv_4bit_cuda: unsupported size O = ", b.O, ", I = ", b.I,
                  " (needs (O + 16) · I / 32 < 2^31)");
  }
  if (a.rows < 1 || a.rows > 2)
    throw_error(ErrorKind::Usage, "gemv_4bit_cuda: rows must be 1 or 2, got ", a.rows);
  if (!a.norm_w && (a.x_add || a.res_out))
    throw_error(ErrorKind::Usage, "gemv_4bit_cuda: x_add and res_out belong to the fused norm (norm_w)");
  if (a.norm_w && (a.rows != 1 || !aligned16(a.norm_w) || (a.x_add && !aligned16(a.x_add)) ||
                   (a.res_out && (!aligned16(a.res_out) || a.res_out == a.x || a.res_out == a.x_add))))
    throw_error(
        ErrorKind::Usage,
        "gemv_4bit_cuda: the fused norm needs one row, 16-byte aligned norm_w, x_add and res_out, and "
        "res_out apart from x and x_add (got ",
        a.rows, " rows)");
  check_blocksize(a.blocksize, "gemv_4bit_cuda");
  // A lane pair's chunks (2k, 2k + 1 of a row) share a block when blocks hold 2 chunks (64 weights) or more
  // and every row starts on an even chunk.
  const bool pair = a.blocksize >= 64 && (a.I / 32) % 2 == 0;
  // Two weights of equal O take their groups in turns (the layout glu_out needs).
  const bool in_turns =
      parts.size() == 2 && parts[1].O == a.O && pair && gemv_4bit_glu_supported(a.I, a.blocksize, a.rows);
  if (a.glu_out && (!in_turns || a.out_dtype != DType::BF16 || !a.out || !parts[1].out))
    throw_error(ErrorKind::Usage,
                "gemv_4bit_cuda: glu_out needs two weights of equal O (gate, up) with BF16 outs, block size "
                ">= 64 and I % 64 == 0 (got ",
                parts.size(), " weights, I = ", a.I, ", block size ", a.blocksize, ")");
  // Two x rows that do not fit in shared memory: one launch each.
  if (a.rows == 2 && gemv_smem(1, 2, (int)a.I, parts.size() > 1) > max_dynamic_smem()) {
    std::vector<Gemv4Args> one = parts;
    for (Gemv4Args& b : one) b.rows = 1;
    gemv_4bit_cuda_parts(one, stream);
    for (Gemv4Args& b : one) {
      b.x = static_cast<const __nv_bfloat16*>(b.x) + b.I;
      b.out = static_cast<char*>(b.out) + dtype_nbytes(b.out_dtype, b.O);
      if (b.glu_out) b.glu_out = static_cast<__nv_bfloat16*>(b.glu_out) + b.O;
    }
    gemv_4bit_cuda_parts(one, stream);
    return;
  }
  if (parts.size() > 1 && !pair) {
    for (const Gemv4Args& b : parts) gemv_4bit_cuda_parts({b}, stream);
    return;
  }
  if (in_turns)
    launch_parts<2>(parts, pair, stream);
  else
    parts.size() > 1 ? launch_parts<kMaxParts>(parts, pair, stream) : launch_parts<1>(parts, pair, stream);
  check_launch("gemv4_kernel");
}

}  // namespace qtune
