// jaxreg's native XLA:CPU custom calls: the single-pass update step (two calls and a
// registry) and, at the end of this file, the exact selection behind the pruning masks.
//
// `jaxreg_sumsq` returns the sum of squares of every leaf (one read of the gradients),
// for global- and per-leaf-norm clipping. `jaxreg_step` runs a chain's element-wise rule
// over every leaf in one pass that reads g, w and the optimizer's state slots once and
// writes w and the slots once (8 transfers per parameter for clip + Adam, where the
// unfused chain moves 11 or more); it may also read per-leaf masks (a pruning mask) and
// count elements (a value clip's clipped fraction). The rule itself is not here:
// jaxreg/fused.py writes it as a small C++ loop per chain, compiles it once, and
// registers it under an id with `jaxreg_register_kernels`; the custom call names that id.
//
// A chain may hold members that rescale each unit of a leaf by a factor of the unit's
// norm (max_norm, group lasso, an L2 ball): they cut a leaf's work into stages. A
// global ball's one unit is all the leaves it selects.
// Stage 0 runs the element-wise members before the first of them and, from the rows
// it has just written (still in cache), sums the squares of each unit; the unit
// factors follow from the sums; stage k rescales every unit and runs the members
// after the k-th such member (parameter-space ones: they read only the new value),
// one more read and write of w per stage.
//
// Under `jax.vmap` both calls see every operand and result with leading batch axes
// (`vmap_method="broadcast_all"`): they take the number of lanes from their results
// (one result row per lane) and run every lane's leaves as leaves of their own, with that
// lane's scalars and counters, in the same tasks; a global norm or a global ball is per lane.
//
// The work is cut into tasks over all leaves together, so every core of XLA's intra-op
// pool stays busy whatever the leaf sizes. A leaf without stages is cut into chunks of
// kChunk elements. A leaf with stages is viewed as rows of `units * inner` columns
// (unit of column c: c / inner) and cut into a bounded number of groups: ranges of
// whole rows, or, when a row is longer than a chunk, ranges of columns over all rows.
// Each group keeps its own sum of squares per unit it touches, in double (squares of a
// run of one unit are added in float over at most 512 elements first, as the global
// norm does), so the scratch memory is O(units), the sums are as precise as the global
// norm's and the same on every run (groups are added up in a fixed order).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <string>
#include <vector>

#include "abi.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using jaxreg::Factor;
using jaxreg::One;
using jaxreg::Rows;
using jaxreg::Stage0;

namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per task handed to a thread
constexpr int64_t kMinColumns = 1024;  // a column group reads runs of at least this many floats

std::mutex registry_mu;
std::map<std::string, std::vector<void*>>& registry() {
  static auto* kernels = new std::map<std::string, std::vector<void*>>();
  return *kernels;
}

struct Task {
  int64_t leaf, begin, end;  // a chunk: elements [begin, end); a group: rows or columns [begin, end)
  int64_t group = -1;         // a leaf with stages: the group's index
};

// The chunks of a leaf of `size` elements, in kChunk pieces.
void add_tasks(int64_t leaf, int64_t size, std::vector<Task>& tasks) {
  for (int64_t b = 0; b < size; b += kChunk) tasks.push_back({leaf, b, std::min(size, b + kChunk)});
}

// How many helper threads `tasks` are worth: one per chunk of elements (a group of a leaf
// with stages counts as a chunk), so that tiny leaves (say, many lanes of a small model
// under vmap) run on the calling thread instead of waking threads for microseconds of work.
int64_t helpers_for(const std::vector<Task>& tasks) {
  int64_t elements = 0;
  for (const Task& t : tasks) elements += t.group < 0 ? t.end - t.begin : kChunk;
  return elements / kChunk;
}

// Sum of squares of x[0..n). Its range is cut into four parts read in lockstep: one
// stream of loads per core reads memory at about 60-80% of the rate of several (the
// norm pass of the 10M-parameter step measured 1.2-1.7x faster with four). Each part
// keeps sixteen float lanes (they vectorize without reordering a single sum), added up
// in double every 512 elements; the tail that does not split evenly runs as one part.
double sum_squares(const float* x, int64_t n) {
  constexpr int kParts = 4;
  constexpr int64_t kBlock = 512;
  const int64_t part = n / (kParts * kBlock) * kBlock;
  double total = 0.0;
  auto add = [&](const float (&acc)[16]) {
    for (int j = 0; j < 16; ++j) total += acc[j];
  };
  for (int64_t b = 0; b < part; b += kBlock) {
    float acc[kParts][16] = {};
    for (int64_t i = b; i < b + kBlock; i += 16)
      for (int p = 0; p < kParts; ++p)
        for (int j = 0; j < 16; ++j) acc[p][j] += x[p * part + i + j] * x[p * part + i + j];
    for (const auto& a : acc) add(a);
  }
  for (int64_t b = kParts * part; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float acc[16] = {};
    int64_t i = b;
    for (; i + 16 <= e; i += 16)
      for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * x[i + j];
    for (; i < e; ++i) acc[0] += x[i] * x[i];
    add(acc);
  }
  return total;
}

// Runs work(t) for every task on the calling thread and on at most `max_helpers` threads
// of XLA's intra-op pool. The caller waits only for tasks that were claimed, never for a
// helper to start (the caller may itself hold a pool thread); a helper that starts late
// finds nothing left.
template <typename Work>
void parallel_for(ffi::ThreadPool& pool, int64_t n_tasks, int64_t max_helpers, const Work& work) {
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
    const Work* work;
  };
  if (n_tasks <= 0) return;
  auto shared = std::make_shared<Shared>();
  shared->work = &work;
  auto drain = [n_tasks](Shared& s) {
    for (int64_t t; (t = s.next.fetch_add(1)) < n_tasks;) {
      (*s.work)(t);
      if (s.done.fetch_add(1) + 1 == n_tasks) {
        std::lock_guard<std::mutex> lock(s.mu);
        s.cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>({pool.num_threads(), n_tasks - 1, max_helpers});
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([shared, drain]() { drain(*shared); });
  drain(*shared);
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == n_tasks; });
}

// Returns each leaf's sum of squares, then each leaf's 2-norm: the sqrt of the sum rounded
// to float, as the unfused chain computes it (a sum past float's range is inf there too).
// Under vmap, lane b's values are row b of the result, and each leaf holds its lanes one
// after the other.
ffi::Error SumSquares(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::Result<ffi::Buffer<ffi::F32>> sums) {
  const int64_t n_leaves = static_cast<int64_t>(args.size());
  const int64_t count = static_cast<int64_t>(sums->element_count());
  if (n_leaves == 0 || count == 0 || count % (2 * n_leaves) != 0)
    return ffi::Error::InvalidArgument("jaxreg_sumsq: the result must hold two values per leaf and lane");
  const int64_t lanes = count / (2 * n_leaves);
  std::vector<const float*> data(lanes * n_leaves);  // lane b's leaf l at b * n_leaves + l
  std::vector<int64_t> sizes(lanes * n_leaves);
  for (int64_t l = 0; l < n_leaves; ++l) {
    auto buf = args.get<ffi::AnyBuffer>(l);
    if (buf.has_error()) return buf.error();
    if (buf->element_type() != ffi::DataType::F32) return ffi::Error::InvalidArgument("jaxreg_sumsq: float32 only");
    const int64_t size = static_cast<int64_t>(buf->element_count());
    if (size % lanes != 0)
      return ffi::Error::InvalidArgument("jaxreg_sumsq: a leaf does not hold the same number of lanes as the result");
    for (int64_t b = 0; b < lanes; ++b) {
      data[b * n_leaves + l] = static_cast<const float*>(buf->untyped_data()) + b * (size / lanes);
      sizes[b * n_leaves + l] = size / lanes;
    }
  }
  std::vector<Task> tasks;
  for (int64_t v = 0; v < lanes * n_leaves; ++v) add_tasks(v, sizes[v], tasks);
  std::vector<double> partial(tasks.size());
  parallel_for(pool, static_cast<int64_t>(tasks.size()), helpers_for(tasks), [&](int64_t t) {
    const Task& task = tasks[t];
    partial[t] = sum_squares(data[task.leaf] + task.begin, task.end - task.begin);
  });
  std::vector<double> per_leaf(lanes * n_leaves, 0.0);
  for (size_t t = 0; t < tasks.size(); ++t) per_leaf[tasks[t].leaf] += partial[t];
  float* out = sums->typed_data();
  for (int64_t v = 0; v < lanes * n_leaves; ++v) {
    float* row = out + (v / n_leaves) * 2 * n_leaves;
    const int64_t l = v % n_leaves;
    row[l] = static_cast<float>(per_leaf[v]);
    row[n_leaves + l] = std::sqrt(row[l]);
  }
  return ffi::Error::Success();
}

// A group of a leaf with stages: the units it touches, [first_unit, first_unit + sums.size()),
// with its sum of squares of each.
struct Group {
  int64_t first_unit = 0;
  std::vector<double> sums;
  std::vector<float> block;  // inner == 1: float sums over a few rows, added to `sums`
};

// One leaf of the step: its buffers, its variant's functions and, when the variant has
// stages, its layout (rows of `cols = units * inner` columns) and groups.
struct Leaf {
  const float* g = nullptr;
  const float* table = nullptr;    // its lane's shared scalars
  const float* scalars = nullptr;  // its row of its lane's leaf table
  float* w = nullptr;
  float* slots[jaxreg::kMaxSlots] = {};
  const bool* inputs[jaxreg::kMaxInputs] = {};  // read-only masks, one byte per element
  int64_t size = 0, stages = 0, units = 1, inner = 1, rows = 1, cols = 1;
  bool by_columns = false;  // groups are column ranges over all rows (rows longer than a chunk)
  const int64_t* joint = nullptr;  // per stage k >= 1: the member whose unit spans leaves, or -1
  void* const* fns = nullptr;      // stage 0, then (factor, rows, one) for each stage k >= 1
  std::vector<Group> groups;
  std::vector<float> factors;  // one per unit, for the next stage
};

// Cuts a leaf with stages into groups (see the top of this file), one task each.
void add_groups(int64_t l, Leaf& leaf, int64_t max_groups, std::vector<Task>& tasks) {
  if (leaf.units == 1) leaf.inner = leaf.size;  // one unit: the whole leaf is one row
  leaf.cols = leaf.units * leaf.inner;
  leaf.rows = leaf.size / leaf.cols;
  const int64_t wanted = std::max<int64_t>(1, std::min(max_groups, (leaf.size + kChunk - 1) / kChunk));
  leaf.by_columns = leaf.cols > kChunk;
  const int64_t extent = leaf.by_columns ? leaf.cols : leaf.rows;
  int64_t step = (extent + wanted - 1) / wanted;
  if (leaf.by_columns) step = std::min(extent, std::max(step, kMinColumns));
  for (int64_t b = 0; b < extent; b += step) {
    const int64_t e = std::min(extent, b + step);
    Group group;
    group.first_unit = leaf.by_columns ? b / leaf.inner : 0;
    const int64_t last_unit = leaf.by_columns ? (e - 1) / leaf.inner + 1 : leaf.units;
    group.sums.assign(last_unit - group.first_unit, 0.0);
    if (leaf.inner == 1) group.block.assign(group.sums.size(), 0.0f);
    tasks.push_back({l, b, e, static_cast<int64_t>(leaf.groups.size())});
    leaf.groups.push_back(std::move(group));
  }
}

// Adds the squares of x[0..n), a run of one row from column c, to the group's sums.
void add_squares(const Leaf& leaf, Group& group, const float* x, int64_t n, int64_t c) {
  if (leaf.inner == 1) {
    double* sums = group.sums.data() + (c - group.first_unit);
    for (int64_t j = 0; j < n; ++j) sums[j] += static_cast<double>(x[j] * x[j]);
    return;
  }
  while (n > 0) {
    const int64_t run = std::min(n, leaf.inner - c % leaf.inner);
    group.sums[c / leaf.inner - group.first_unit] += sum_squares(x, run);
    x += run, c += run, n -= run;
  }
}

// Stage k (0: the members before the first rescaling; k >= 1: the k-th rescaling and the
// members after it) on elements [begin, begin + n) of one row, from column c.
void run_piece(Leaf& leaf, int64_t k, int64_t begin, int64_t n, int64_t c, int64_t n_slots, int64_t n_inputs,
               int64_t* counts) {
  const float* table = leaf.table;
  if (k == 0) {
    float* slots[jaxreg::kMaxSlots];
    const bool* inputs[jaxreg::kMaxInputs];
    for (int64_t s = 0; s < n_slots; ++s) slots[s] = leaf.slots[s] + begin;
    for (int64_t s = 0; s < n_inputs; ++s) inputs[s] = leaf.inputs[s] + begin;
    reinterpret_cast<Stage0>(leaf.fns[0])(leaf.g + begin, leaf.w + begin, slots, inputs, table, leaf.scalars, n,
                                          counts);
    return;
  }
  if (leaf.inner == 1) {
    reinterpret_cast<Rows>(leaf.fns[3 * k - 1])(leaf.w + begin, table, 1, n, n, leaf.factors.data() + c);
    return;
  }
  for (int64_t done = 0; done < n;) {
    const int64_t run = std::min(n - done, leaf.inner - (c + done) % leaf.inner);
    reinterpret_cast<One>(leaf.fns[3 * k])(leaf.w + begin + done, table, run, leaf.factors[(c + done) / leaf.inner]);
    done += run;
  }
}

// Stage k of one task: a chunk of a leaf without stages, or a group of a leaf with them;
// for a group, then its sums of squares when another stage follows.
void run_task(Leaf& leaf, const Task& task, int64_t k, int64_t n_slots, int64_t n_inputs, int64_t* counts) {
  if (task.group < 0) {
    run_piece(leaf, k, task.begin, task.end - task.begin, 0, n_slots, n_inputs, counts);
    return;
  }
  Group& group = leaf.groups[task.group];
  const bool reduce = k < leaf.stages;
  std::fill(group.sums.begin(), group.sums.end(), 0.0);
  if (leaf.by_columns) {  // columns [begin, end) of every row, at most a chunk at a time (still in cache)
    for (int64_t r = 0; r < leaf.rows; ++r)
      for (int64_t c = task.begin; c < task.end; c += kChunk) {
        const int64_t n = std::min(kChunk, task.end - c), at = r * leaf.cols + c;
        run_piece(leaf, k, at, n, c, n_slots, n_inputs, counts);
        if (reduce) add_squares(leaf, group, leaf.w + at, n, c);
      }
    return;
  }
  // Rows [begin, end), a few of them (about 512 elements) at a time.
  const int64_t per_block = std::max<int64_t>(1, 512 / leaf.cols);
  for (int64_t r = task.begin; r < task.end; r += per_block) {
    const int64_t n_rows = std::min(per_block, task.end - r);
    const int64_t at = r * leaf.cols;
    if (k == 0) {
      run_piece(leaf, 0, at, n_rows * leaf.cols, 0, n_slots, n_inputs, counts);
    } else if (leaf.inner > 1) {
      for (int64_t q = 0; q < n_rows; ++q) run_piece(leaf, k, at + q * leaf.cols, leaf.cols, 0, 0, 0, nullptr);
    } else {
      reinterpret_cast<Rows>(leaf.fns[3 * k - 1])(leaf.w + at, leaf.table, n_rows, leaf.cols, leaf.cols,
                                                  leaf.factors.data());
    }
    if (!reduce) continue;
    if (leaf.inner > 1) {
      for (int64_t q = 0; q < n_rows; ++q) add_squares(leaf, group, leaf.w + at + q * leaf.cols, leaf.cols, 0);
      continue;
    }
    float* block = group.block.data();
    std::fill(block, block + leaf.cols, 0.0f);
    for (int64_t q = 0; q < n_rows; ++q)
      for (int64_t j = 0; j < leaf.cols; ++j) block[j] += leaf.w[at + q * leaf.cols + j] * leaf.w[at + q * leaf.cols + j];
    for (int64_t j = 0; j < leaf.cols; ++j) group.sums[j] += block[j];
  }
}

// After a stage: each unit's sum of squares, the groups added in order.
std::vector<double> unit_sums(const Leaf& leaf) {
  std::vector<double> sums(leaf.units, 0.0);
  for (const Group& group : leaf.groups)
    for (size_t j = 0; j < group.sums.size(); ++j) sums[group.first_unit + j] += group.sums[j];
  return sums;
}

// Stage k's factors of a leaf whose units are its own.
void unit_factors(Leaf& leaf, int64_t k) {
  const std::vector<double> sums = unit_sums(leaf);
  leaf.factors.assign(sums.begin(), sums.end());
  reinterpret_cast<Factor>(leaf.fns[3 * k - 2])(leaf.factors.data(), leaf.table, leaf.units);
}

// Stage k's factor of the leaves `group` (of one lane) that make one unit together (a
// global ball): from the sum of their sums of squares, computed once.
void joint_factor(std::vector<Leaf>& leaves, const std::vector<int64_t>& group, int64_t k) {
  double total = 0.0;
  for (int64_t l : group) total += unit_sums(leaves[l])[0];
  float f = static_cast<float>(total);
  reinterpret_cast<Factor>(leaves[group[0]].fns[3 * k - 2])(&f, leaves[group[0]].table, 1);
  for (int64_t l : group) leaves[l].factors.assign(1, f);
}

// A float32 buffer of exactly `size` elements, or why not.
template <typename Buffer>
bool fits(const Buffer& buffer, int64_t size) {
  return buffer.element_type() == ffi::DataType::F32 && static_cast<int64_t>(buffer.element_count()) == size;
}

// Operands: scalars, the leaf table (`n_leaf_scalars` per leaf, row by row), then per leaf
// g, w, slot 0 .. n_slots-1, input 0 .. n_inputs-1 (bool). Results: per leaf w, slots
// (each aliased to its operand, so it holds the old value on entry), then the totals of
// the chain's `n_counters` counters (at least one entry). `stages[v]` is the
// number of per-unit members of variant v; `units[l]` and `inner[l]` lay out leaf l
// as (outer, units, inner) for them. `joint` lists, variant by variant, for each of its
// stages the member whose one unit is all the leaves it selects, or -1. Every buffer's
// type and size is checked against its leaf's parameters before anything is written.
ffi::Error Step(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets, std::string_view kernel,
                ffi::Span<const int64_t> variants, int64_t n_slots, int64_t n_inputs, int64_t n_counters,
                int64_t n_leaf_scalars, ffi::Span<const int64_t> stages, ffi::Span<const int64_t> units,
                ffi::Span<const int64_t> inner, ffi::Span<const int64_t> joint) {
  std::vector<void*> fns;
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    auto found = registry().find(std::string(kernel));
    if (found == registry().end())
      return ffi::Error::InvalidArgument("jaxreg_step: kernel " + std::string(kernel) +
                                         " is not registered in this process (trace the step again)");
    fns = found->second;
  }
  const int64_t n_leaves = static_cast<int64_t>(variants.size());
  const int64_t per_leaf = 2 + n_slots + n_inputs;  // operands of one leaf
  if (n_slots < 0 || n_slots > jaxreg::kMaxSlots || n_inputs < 0 || n_inputs > jaxreg::kMaxInputs ||
      static_cast<int64_t>(args.size()) != 2 + n_leaves * per_leaf || n_counters < 0 ||
      static_cast<int64_t>(rets.size()) != n_leaves * (1 + n_slots) + 1 ||
      static_cast<int64_t>(units.size()) != n_leaves || static_cast<int64_t>(inner.size()) != n_leaves)
    return ffi::Error::InvalidArgument("jaxreg_step: operands do not match the leaves and slots");
  std::vector<int64_t> offsets, joint_offsets;  // each variant's first function, first joint entry
  int64_t n_fns = 0, n_joint = 0;
  for (int64_t st : stages) {
    if (st < 0) return ffi::Error::InvalidArgument("jaxreg_step: negative stage count");
    offsets.push_back(n_fns);
    joint_offsets.push_back(n_joint);
    n_fns += 1 + 3 * st;
    n_joint += st;
  }
  if (n_joint != static_cast<int64_t>(joint.size()))
    return ffi::Error::InvalidArgument("jaxreg_step: joint does not list every stage of every variant");
  if (n_fns != static_cast<int64_t>(fns.size()))
    return ffi::Error::InvalidArgument("jaxreg_step: the kernel's functions do not match the variants' stages");
  // One row of counter totals per lane: the number of lanes, which every other buffer
  // must hold as many times.
  auto totals = rets.get<ffi::AnyBuffer>(n_leaves * (1 + n_slots));
  if (totals.has_error()) return totals.error();
  const int64_t per_lane_totals = std::max<int64_t>(n_counters, 1);
  const int64_t total_count = static_cast<int64_t>((*totals)->element_count());
  if ((*totals)->element_type() != ffi::DataType::F32 || total_count == 0 || total_count % per_lane_totals != 0)
    return ffi::Error::InvalidArgument("jaxreg_step: the counters' result must hold one row per lane");
  const int64_t lanes = total_count / per_lane_totals;
  auto scalars = args.get<ffi::AnyBuffer>(0);
  if (scalars.has_error()) return scalars.error();
  if (scalars->element_type() != ffi::DataType::F32 || static_cast<int64_t>(scalars->element_count()) % lanes != 0)
    return ffi::Error::InvalidArgument("jaxreg_step: the scalars must be float32, one row per lane");
  const int64_t table_stride = static_cast<int64_t>(scalars->element_count()) / lanes;
  auto leaf_table = args.get<ffi::AnyBuffer>(1);
  if (leaf_table.has_error()) return leaf_table.error();
  const int64_t leaf_table_count = static_cast<int64_t>(leaf_table->element_count());
  if (n_leaf_scalars < 0 || leaf_table->element_type() != ffi::DataType::F32 || leaf_table_count % lanes != 0 ||
      leaf_table_count / lanes < n_leaves * n_leaf_scalars)
    return ffi::Error::InvalidArgument("jaxreg_step: the leaf table is too small");
  const int64_t leaf_table_stride = leaf_table_count / lanes;
  const int64_t max_groups = 4 * (pool.num_threads() + 1);
  std::vector<Leaf> leaves(lanes * n_leaves);  // lane b's leaf l at b * n_leaves + l
  std::vector<Task> tasks;
  int64_t max_stages = 0;
  for (int64_t l = 0; l < n_leaves; ++l) {
    if (variants[l] < 0 || variants[l] >= static_cast<int64_t>(stages.size()))
      return ffi::Error::InvalidArgument("jaxreg_step: variant out of range");
    const int64_t base = 2 + l * per_leaf;
    auto wl = args.get<ffi::AnyBuffer>(base + 1);
    if (wl.has_error()) return wl.error();
    const int64_t all_lanes = static_cast<int64_t>(wl->element_count());
    if (all_lanes % lanes != 0)
      return ffi::Error::InvalidArgument("jaxreg_step: a parameter does not hold one block per lane");
    const int64_t size = all_lanes / lanes;
    const float* g = nullptr;
    for (int64_t s = 0; s <= n_slots; ++s) {  // g, then each slot: float32, the parameter's size
      auto in = args.get<ffi::AnyBuffer>(s == 0 ? base : base + 1 + s);
      if (in.has_error()) return in.error();
      if (!fits(*in, all_lanes))
        return ffi::Error::InvalidArgument("jaxreg_step: a gradient or state slot does not match its parameter");
      if (s == 0) g = static_cast<const float*>(in->untyped_data());
    }
    const bool* inputs[jaxreg::kMaxInputs] = {};
    for (int64_t s = 0; s < n_inputs; ++s) {
      auto in = args.get<ffi::AnyBuffer>(base + 2 + n_slots + s);
      if (in.has_error()) return in.error();
      if (in->element_type() != ffi::DataType::PRED || static_cast<int64_t>(in->element_count()) != all_lanes)
        return ffi::Error::InvalidArgument("jaxreg_step: an input is not a bool array of its leaf's size");
      inputs[s] = static_cast<const bool*>(in->untyped_data());
    }
    float* outs[1 + jaxreg::kMaxSlots] = {};  // w, then the slots
    for (int64_t s = 0; s <= n_slots; ++s) {
      auto out = rets.get<ffi::AnyBuffer>(l * (1 + n_slots) + s);
      if (out.has_error()) return out.error();
      if (!fits(**out, all_lanes))
        return ffi::Error::InvalidArgument("jaxreg_step: a result does not match its parameter");
      outs[s] = static_cast<float*>((*out)->untyped_data());
    }
    if (stages[variants[l]] > 0 && size > 0 &&
        (units[l] < 1 || inner[l] < 1 || size % (units[l] * inner[l]) != 0))
      return ffi::Error::InvalidArgument("jaxreg_step: a leaf's units do not divide it");
    for (int64_t b = 0; b < lanes; ++b) {
      const int64_t v = b * n_leaves + l;
      Leaf& leaf = leaves[v];
      const int64_t at = b * size;
      leaf.size = size;
      leaf.g = g + at;
      leaf.w = outs[0] + at;
      for (int64_t s = 0; s < n_slots; ++s) leaf.slots[s] = outs[1 + s] + at;
      for (int64_t s = 0; s < n_inputs; ++s) leaf.inputs[s] = inputs[s] + at;
      leaf.fns = fns.data() + offsets[variants[l]];
      leaf.joint = joint.begin() + joint_offsets[variants[l]];
      leaf.table = static_cast<const float*>(scalars->untyped_data()) + b * table_stride;
      leaf.scalars = static_cast<const float*>(leaf_table->untyped_data()) + b * leaf_table_stride + l * n_leaf_scalars;
      leaf.stages = size == 0 ? 0 : stages[variants[l]];
      if (leaf.stages == 0) {
        add_tasks(v, leaf.size, tasks);
        continue;
      }
      leaf.units = units[l];
      leaf.inner = inner[l];
      add_groups(v, leaf, max_groups, tasks);
      max_stages = std::max(max_stages, leaf.stages);
    }
  }
  std::vector<int64_t> counts(tasks.size() * n_counters, 0);  // per task: no sharing between threads
  parallel_for(pool, static_cast<int64_t>(tasks.size()), helpers_for(tasks), [&](int64_t t) {
    run_task(leaves[tasks[t].leaf], tasks[t], 0, n_slots, n_inputs, counts.data() + t * n_counters);
  });
  float* total = static_cast<float*>((*totals)->untyped_data());
  std::vector<int64_t> sums(total_count, 0);
  for (size_t t = 0; t < tasks.size(); ++t)
    for (int64_t c = 0; c < n_counters; ++c)
      sums[tasks[t].leaf / n_leaves * per_lane_totals + c] += counts[t * n_counters + c];
  for (int64_t i = 0; i < total_count; ++i) total[i] = static_cast<float>(sums[i]);
  for (int64_t k = 1; k <= max_stages; ++k) {
    std::vector<int64_t> staged;
    std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>> groups;  // (lane, joint member) -> its leaves
    for (int64_t v = 0; v < lanes * n_leaves; ++v) {
      if (leaves[v].stages < k) continue;
      if (leaves[v].joint[k - 1] >= 0) groups[{v / n_leaves, leaves[v].joint[k - 1]}].push_back(v);
      else staged.push_back(v);
    }
    parallel_for(pool, static_cast<int64_t>(staged.size()), static_cast<int64_t>(staged.size()),
                 [&](int64_t i) { unit_factors(leaves[staged[i]], k); });
    for (const auto& [key, group] : groups) joint_factor(leaves, group, k);
    std::vector<Task> stage_tasks;
    for (const Task& t : tasks)
      if (leaves[t.leaf].stages >= k) stage_tasks.push_back(t);
    parallel_for(pool, static_cast<int64_t>(stage_tasks.size()), helpers_for(stage_tasks), [&](int64_t t) {
      run_task(leaves[stage_tasks[t].leaf], stage_tasks[t], k, n_slots, n_inputs, nullptr);
    });
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------
// Exact selection for the pruning masks (jaxreg/pruning/_select.py): in each group of
// arrays, the `counts[g]` entries of lowest (key, position), where an entry's position
// is its flat index in its group (leaves in the order given) and only `alive` entries
// take part. Keys are int32 with the order of the scores: `kind` 0 is |x| of a float32
// (NaNs tie above inf), 1 the order of a float32 (NaN above every number, -0 == +0), 2
// an int32 as it is. Two calls: `jaxreg_select_threshold` finds each group's threshold
// key by a radix search on the key (three counting passes of 11, 11 and 10 bits, only
// over the entries whose higher bits match) and how many of the ties at it each leaf
// takes (the first ones in position order); `jaxreg_select_mark` writes the marks of a
// few leaves from that, so that no instruction has more than a few hundred outputs. The
// only memory is a 2048-entry count per group being searched.

constexpr int64_t kMagnitudeKey = 0, kOrderKey = 1, kIntKey = 2;

// The key of entry i, mapped to uint32 with the same order (the sign bit flipped).
inline uint32_t select_key(const void* data, int64_t i, int64_t kind) {
  int32_t key;
  if (kind == kIntKey) {
    key = static_cast<const int32_t*>(data)[i];
  } else {
    const float x = static_cast<const float*>(data)[i];
    int32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    if (kind == kMagnitudeKey) key = std::min<int32_t>(bits & 0x7fffffff, 0x7f800001);
    else if (x != x) key = 0x7fffffff;
    else key = bits < 0 ? (bits ^ 0x7fffffff) + 1 : bits;
  }
  return static_cast<uint32_t>(key) ^ 0x80000000u;
}

struct SelectLeaf {
  const void* data = nullptr;
  const bool* alive = nullptr;  // null: every entry takes part
  const bool* floor = nullptr;  // null, or False where the key is the lowest but one, whatever the value
  int64_t size = 0, group = 0;
};

// The key of entry i of a leaf: a floored entry ranks below every float and every int32
// but the lowest (the key -2**31 + 1, as the XLA search's BOTTOM_KEY).
inline uint32_t leaf_key(const SelectLeaf& leaf, int64_t i, int64_t kind) {
  return leaf.floor != nullptr && !leaf.floor[i] ? 1u : select_key(leaf.data, i, kind);
}

// Reads the leaves of `args` from `first`. The data come as `rows.size()` operands, operand
// o holding `rows[o]` leaves of one size one after the other; leaf l is row
// `source[2 l + 1]` of operand `source[2 l]`. Then come the leaves' alive masks (with
// `has_alive`) and floor masks (with `has_floor`), one operand per leaf. Each is checked
// against `kind` and its leaf's size.
ffi::Error select_leaves(ffi::RemainingArgs& args, size_t first, ffi::Span<const int64_t> rows,
                         ffi::Span<const int64_t> source, int64_t kind, bool has_alive, bool has_floor,
                         std::vector<SelectLeaf>& leaves) {
  if (kind < kMagnitudeKey || kind > kIntKey) return ffi::Error::InvalidArgument("jaxreg_select: unknown key kind");
  const size_t n_ops = rows.size(), n = source.size() / 2;
  if (source.size() % 2 != 0 || args.size() != first + n_ops + n * (has_alive + has_floor))
    return ffi::Error::InvalidArgument("jaxreg_select: operands do not match the leaves");
  std::vector<const char*> bases(n_ops);
  std::vector<int64_t> row_sizes(n_ops);
  for (size_t o = 0; o < n_ops; ++o) {
    auto data = args.get<ffi::AnyBuffer>(first + o);
    if (data.has_error()) return data.error();
    if (data->element_type() != (kind == kIntKey ? ffi::DataType::S32 : ffi::DataType::F32))
      return ffi::Error::InvalidArgument("jaxreg_select: a leaf is not of its key's dtype");
    const int64_t count = static_cast<int64_t>(data->element_count());
    if (rows[o] < 1 || count % rows[o] != 0)
      return ffi::Error::InvalidArgument("jaxreg_select: an operand does not hold whole rows");
    bases[o] = static_cast<const char*>(data->untyped_data());
    row_sizes[o] = count / rows[o];
  }
  leaves.resize(n);
  for (size_t l = 0; l < n; ++l) {
    const int64_t o = source[2 * l], r = source[2 * l + 1];
    if (o < 0 || o >= static_cast<int64_t>(n_ops) || r < 0 || r >= rows[o])
      return ffi::Error::InvalidArgument("jaxreg_select: a leaf's source is out of range");
    leaves[l].data = bases[o] + r * row_sizes[o] * 4;  // float32 and int32 alike
    leaves[l].size = row_sizes[o];
    for (int which = 0; which < 2; ++which) {
      if (!(which == 0 ? has_alive : has_floor)) continue;
      auto mask = args.get<ffi::AnyBuffer>(first + n_ops + (which == 0 || !has_alive ? 0 : 1) * n + l);
      if (mask.has_error()) return mask.error();
      if (mask->element_type() != ffi::DataType::PRED || static_cast<int64_t>(mask->element_count()) != leaves[l].size)
        return ffi::Error::InvalidArgument("jaxreg_select: a mask is not a bool array of its leaf's size");
      (which == 0 ? leaves[l].alive : leaves[l].floor) = static_cast<const bool*>(mask->untyped_data());
    }
  }
  return ffi::Error::Success();
}

// One group's threshold (as the uint32 key) and each of its leaves' share of the ties.
void select_group(const std::vector<SelectLeaf>& leaves, const std::vector<int64_t>& members, int64_t count,
                  int64_t kind, int32_t* threshold, int32_t* takes) {
  int64_t alive = 0;
  for (int64_t l : members)
    for (int64_t i = 0; i < leaves[l].size; ++i) alive += leaves[l].alive == nullptr || leaves[l].alive[i];
  int64_t need = std::max<int64_t>(0, std::min(count, alive));
  for (int64_t l : members) takes[l] = 0;
  *threshold = 0;
  if (need == 0) return;
  uint32_t prefix = 0, fixed = 0;  // the threshold's bits found so far, and which they are
  const int shifts[3] = {21, 10, 0}, widths[3] = {11, 11, 10};
  std::vector<int64_t> counts(1 << 11);
  for (int pass = 0; pass < 3; ++pass) {
    const uint32_t digits = (1u << widths[pass]) - 1;
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t l : members) {
      const SelectLeaf& leaf = leaves[l];
      for (int64_t i = 0; i < leaf.size; ++i) {
        if (leaf.alive != nullptr && !leaf.alive[i]) continue;
        const uint32_t u = leaf_key(leaf, i, kind);
        if ((u & fixed) == prefix) ++counts[(u >> shifts[pass]) & digits];
      }
    }
    uint32_t d = 0;
    while (d < digits && counts[d] < need) need -= counts[d++];  // the counts add up to at least need
    prefix |= d << shifts[pass];
    fixed |= digits << shifts[pass];
  }
  *threshold = static_cast<int32_t>(prefix);
  for (int64_t l : members) {  // the ties at the threshold, taken in position order
    const SelectLeaf& leaf = leaves[l];
    int64_t ties = 0;
    for (int64_t i = 0; i < leaf.size && ties < need; ++i)
      ties += (leaf.alive == nullptr || leaf.alive[i]) && leaf_key(leaf, i, kind) == prefix;
    takes[l] = static_cast<int32_t>(ties);
    need -= ties;
  }
}

// Operands: counts (int32, one per group), then the leaves and their masks as
// select_leaves reads them. Result: int32, each group's threshold, then each leaf's
// share of the ties.
ffi::Error SelectThreshold(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::Result<ffi::Buffer<ffi::S32>> out,
                           ffi::Span<const int64_t> groups, ffi::Span<const int64_t> rows,
                           ffi::Span<const int64_t> source, int64_t kind, int64_t has_alive, int64_t has_floor) {
  auto counts = args.get<ffi::AnyBuffer>(0);
  if (counts.has_error()) return counts.error();
  const int64_t n_groups = static_cast<int64_t>(counts->element_count());
  const int64_t n_leaves = static_cast<int64_t>(groups.size());
  if (counts->element_type() != ffi::DataType::S32 || static_cast<int64_t>(out->element_count()) != n_groups + n_leaves)
    return ffi::Error::InvalidArgument("jaxreg_select_threshold: the counts or the result do not match the groups");
  std::vector<SelectLeaf> leaves;
  if (static_cast<int64_t>(source.size()) != 2 * n_leaves)
    return ffi::Error::InvalidArgument("jaxreg_select_threshold: the sources do not match the groups");
  ffi::Error read = select_leaves(args, 1, rows, source, kind, has_alive != 0, has_floor != 0, leaves);
  if (read.failure()) return read;
  std::vector<std::vector<int64_t>> members(n_groups);
  for (int64_t l = 0; l < n_leaves; ++l) {
    if (groups[l] < 0 || groups[l] >= n_groups)
      return ffi::Error::InvalidArgument("jaxreg_select_threshold: a group out of range");
    members[groups[l]].push_back(l);
  }
  const int32_t* wanted = static_cast<const int32_t*>(counts->untyped_data());
  int32_t* result = out->typed_data();
  parallel_for(pool, n_groups, n_groups, [&](int64_t g) {
    select_group(leaves, members[g], wanted[g], kind, result + g, result + n_groups);
  });
  return ffi::Error::Success();
}

// Operands: the thresholds' call's result, then the leaves of this call and their masks
// as select_leaves reads them. `ids` are the leaves' indices among all (`n_leaves`),
// `groups` their groups (`n_groups`).
// Results: one bool array per leaf, True on the selected entries.
ffi::Error SelectMark(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets,
                      ffi::Span<const int64_t> ids, ffi::Span<const int64_t> groups, ffi::Span<const int64_t> rows,
                      ffi::Span<const int64_t> source, int64_t n_groups, int64_t n_leaves, int64_t kind,
                      int64_t has_alive, int64_t has_floor) {
  auto found = args.get<ffi::AnyBuffer>(0);
  if (found.has_error()) return found.error();
  const size_t n = ids.size();
  if (found->element_type() != ffi::DataType::S32 || n_groups < 0 || n_leaves < 0 ||
      static_cast<int64_t>(found->element_count()) != n_groups + n_leaves || groups.size() != n || rets.size() != n ||
      source.size() != 2 * n)
    return ffi::Error::InvalidArgument("jaxreg_select_mark: operands do not match the leaves and groups");
  std::vector<SelectLeaf> leaves;
  ffi::Error read = select_leaves(args, 1, rows, source, kind, has_alive != 0, has_floor != 0, leaves);
  if (read.failure()) return read;
  std::vector<bool*> marks(n);
  for (size_t l = 0; l < n; ++l) {
    if (ids[l] < 0 || ids[l] >= n_leaves || groups[l] < 0 || groups[l] >= n_groups)
      return ffi::Error::InvalidArgument("jaxreg_select_mark: a leaf or group out of range");
    auto mark = rets.get<ffi::AnyBuffer>(l);
    if (mark.has_error()) return mark.error();
    if ((*mark)->element_type() != ffi::DataType::PRED || static_cast<int64_t>((*mark)->element_count()) != leaves[l].size)
      return ffi::Error::InvalidArgument("jaxreg_select_mark: a result is not a bool array of its leaf's size");
    marks[l] = static_cast<bool*>((*mark)->untyped_data());
  }
  const int32_t* thresholds = static_cast<const int32_t*>(found->untyped_data());
  parallel_for(pool, static_cast<int64_t>(n), static_cast<int64_t>(n), [&](int64_t l) {
    const SelectLeaf& leaf = leaves[l];
    const uint32_t threshold = static_cast<uint32_t>(thresholds[groups[l]]);
    int64_t take = thresholds[n_groups + ids[l]];
    for (int64_t i = 0; i < leaf.size; ++i) {
      const uint32_t u = leaf_key(leaf, i, kind);
      const bool in = leaf.alive == nullptr || leaf.alive[i];
      const bool tie = in && u == threshold && take > 0;
      take -= tie;
      marks[l][i] = (in && u < threshold) || tie;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" void jaxreg_register_kernels(const char* id, void* const* functions, int64_t n) {
  std::lock_guard<std::mutex> lock(registry_mu);
  registry()[id] = std::vector<void*>(functions, functions + n);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxreg_sumsq, SumSquares,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().RemainingArgs().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxreg_select_threshold, SelectThreshold,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<ffi::Span<const int64_t>>("groups")
                                  .Attr<ffi::Span<const int64_t>>("rows")
                                  .Attr<ffi::Span<const int64_t>>("source")
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("has_alive")
                                  .Attr<int64_t>("has_floor"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxreg_select_mark, SelectMark,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("ids")
                                  .Attr<ffi::Span<const int64_t>>("groups")
                                  .Attr<ffi::Span<const int64_t>>("rows")
                                  .Attr<ffi::Span<const int64_t>>("source")
                                  .Attr<int64_t>("n_groups")
                                  .Attr<int64_t>("n_leaves")
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("has_alive")
                                  .Attr<int64_t>("has_floor"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxreg_step, Step,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("kernel")
                                  .Attr<ffi::Span<const int64_t>>("variants")
                                  .Attr<int64_t>("n_slots")
                                  .Attr<int64_t>("n_inputs")
                                  .Attr<int64_t>("n_counters")
                                  .Attr<int64_t>("n_leaf_scalars")
                                  .Attr<ffi::Span<const int64_t>>("stages")
                                  .Attr<ffi::Span<const int64_t>>("units")
                                  .Attr<ffi::Span<const int64_t>>("inner")
                                  .Attr<ffi::Span<const int64_t>>("joint"));
