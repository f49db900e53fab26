// The interface between jaxreg's Python code generator (jaxreg/_native/codegen.py) and
// the step's custom call (step.cc): the types of the functions a chain's kernel exports.
// step.cc includes it to call them; every generated kernel includes it and checks each
// of its functions against these types with a static_assert, so a mismatch between the
// two sides is a compile error (the build falls back to the unfused chain), never a
// call through a wrong function type.
#pragma once

#include <cstdint>
#include <type_traits>

namespace jaxreg {

// Stage 0 of one run of a leaf: stage0(g, w, slots, inputs, S, L, n, C). Updates
// w[0..n) in place from g[0..n) (w holds the old parameters on entry), reads and writes
// the state slots (slots[k][0..n)), reads the bool inputs, the shared scalars S and the
// leaf's own scalars L, and adds what the chain's counters counted to C[0..).
using Stage0 = void (*)(const float* g, float* w, float* const* slots, const bool* const* inputs, const float* S,
                        const float* L, int64_t n, int64_t* C);
// factor(F, S, n): each of the n units' sum of squares F[j] -> its factor, in place.
using Factor = void (*)(float* F, const float* S, int64_t n);
// rows(w, S, rows, cols, stride, F): w[r * stride + j] for r < rows, j < cols is
// rescaled by F[j], then the stage's members run on it.
using Rows = void (*)(float* w, const float* S, int64_t rows, int64_t cols, int64_t stride, const float* F);
// one(w, S, n, f): w[0..n) rescaled by one factor f, then the stage's members.
using One = void (*)(float* w, const float* S, int64_t n, float f);

// The most state slots and bool inputs one chain may read (jaxreg.fused.fast_path
// falls back beyond them).
constexpr int64_t kMaxSlots = 8;
constexpr int64_t kMaxInputs = 8;

}  // namespace jaxreg
