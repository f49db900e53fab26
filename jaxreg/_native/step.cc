// jaxreg's single-pass update step on XLA:CPU: two XLA FFI custom calls and a registry.
//
// `jaxreg_sumsq` returns the sum of squares of every leaf (one read of the gradients),
// for global-norm clipping. `jaxreg_step` runs a chain's element-wise rule over every
// leaf in one pass that reads g, w and the optimizer's state slots once and writes w
// and the slots once (8 transfers per parameter for clip + Adam, where the unfused
// chain moves 11 or more). The rule itself is not here: jaxreg/fused.py writes it as a
// small C++ loop per chain, compiles it once, and registers it under an id with
// `jaxreg_register_kernels`; the custom call names that id.
//
// The work is cut into chunks of all leaves together, so every core of XLA's intra-op
// pool stays busy whatever the leaf sizes.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// kernel(g, w_out, slots, scalars, n): one chunk of one leaf; w_out holds w on entry.
using Kernel = void (*)(const float*, float*, float* const*, const float*, int64_t);

namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per task handed to a thread
constexpr int64_t kMaxSlots = 8;

std::mutex registry_mu;
std::map<std::string, std::vector<Kernel>>& registry() {
  static auto* kernels = new std::map<std::string, std::vector<Kernel>>();
  return *kernels;
}

struct Task {
  int64_t leaf, begin, end;
};

std::vector<Task> make_tasks(const std::vector<int64_t>& sizes) {
  std::vector<Task> tasks;
  for (size_t l = 0; l < sizes.size(); ++l)
    for (int64_t b = 0; b < sizes[l]; b += kChunk)
      tasks.push_back({static_cast<int64_t>(l), b, std::min(sizes[l], b + kChunk)});
  return tasks;
}

// Runs work(t) for every task on the calling thread and on XLA's intra-op pool. The
// caller waits only for tasks that were claimed, never for a helper to start (the caller
// may itself hold a pool thread); a helper that starts late finds nothing left.
template <typename Work>
void parallel_for(ffi::ThreadPool& pool, int64_t n_tasks, const Work& work) {
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
    const Work* work;
  };
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
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n_tasks - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([shared, drain]() { drain(*shared); });
  drain(*shared);
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == n_tasks; });
}

ffi::Error SumSquares(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::Result<ffi::Buffer<ffi::F32>> sums) {
  const size_t n_leaves = args.size();
  std::vector<const float*> data(n_leaves);
  std::vector<int64_t> sizes(n_leaves);
  for (size_t l = 0; l < n_leaves; ++l) {
    auto buf = args.get<ffi::AnyBuffer>(l);
    if (buf.has_error()) return buf.error();
    if (buf->element_type() != ffi::DataType::F32) return ffi::Error::InvalidArgument("jaxreg_sumsq: float32 only");
    data[l] = static_cast<const float*>(buf->untyped_data());
    sizes[l] = static_cast<int64_t>(buf->element_count());
  }
  const std::vector<Task> tasks = make_tasks(sizes);
  std::vector<double> partial(tasks.size());
  parallel_for(pool, static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    // Sixteen float lanes (they vectorize without reordering a single sum), added up in
    // double every 512 elements.
    const Task& task = tasks[t];
    const float* g = data[task.leaf];
    double total = 0.0;
    for (int64_t b = task.begin; b < task.end; b += 512) {
      const int64_t e = std::min(task.end, b + 512);
      float acc[16] = {};
      int64_t i = b;
      for (; i + 16 <= e; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += g[i + j] * g[i + j];
      for (; i < e; ++i) acc[0] += g[i] * g[i];
      for (int j = 0; j < 16; ++j) total += acc[j];
    }
    partial[t] = total;
  });
  std::vector<double> per_leaf(n_leaves, 0.0);
  for (size_t t = 0; t < tasks.size(); ++t) per_leaf[tasks[t].leaf] += partial[t];
  for (size_t l = 0; l < n_leaves; ++l) sums->typed_data()[l] = static_cast<float>(per_leaf[l]);
  return ffi::Error::Success();
}

// Operands: scalars, then per leaf g, w, slot 0 .. n_slots-1. Results: per leaf w, slots
// (each aliased to its operand, so it holds the old value on entry).
ffi::Error Step(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets, std::string_view kernel,
                ffi::Span<const int64_t> variants, int64_t n_slots) {
  std::vector<Kernel> kernels;
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    auto found = registry().find(std::string(kernel));
    if (found == registry().end())
      return ffi::Error::InvalidArgument("jaxreg_step: kernel " + std::string(kernel) +
                                         " is not registered in this process (trace the step again)");
    kernels = found->second;
  }
  const int64_t n_leaves = static_cast<int64_t>(variants.size());
  if (n_slots < 0 || n_slots > kMaxSlots || static_cast<int64_t>(args.size()) != 1 + n_leaves * (2 + n_slots) ||
      static_cast<int64_t>(rets.size()) != n_leaves * (1 + n_slots))
    return ffi::Error::InvalidArgument("jaxreg_step: operands do not match the leaves and slots");
  auto scalars = args.get<ffi::AnyBuffer>(0);
  if (scalars.has_error()) return scalars.error();
  const float* table = static_cast<const float*>(scalars->untyped_data());
  std::vector<const float*> g(n_leaves);
  std::vector<float*> w(n_leaves), slots(n_leaves * kMaxSlots);
  std::vector<int64_t> sizes(n_leaves);
  for (int64_t l = 0; l < n_leaves; ++l) {
    if (variants[l] < 0 || variants[l] >= static_cast<int64_t>(kernels.size()))
      return ffi::Error::InvalidArgument("jaxreg_step: variant out of range");
    auto gl = args.get<ffi::AnyBuffer>(1 + l * (2 + n_slots));
    if (gl.has_error()) return gl.error();
    g[l] = static_cast<const float*>(gl->untyped_data());
    sizes[l] = static_cast<int64_t>(gl->element_count());
    for (int64_t s = 0; s <= n_slots; ++s) {
      auto out = rets.get<ffi::AnyBuffer>(l * (1 + n_slots) + s);
      if (out.has_error()) return out.error();
      float* data = static_cast<float*>((*out)->untyped_data());
      if (s == 0) w[l] = data;
      else slots[l * kMaxSlots + s - 1] = data;
    }
  }
  const std::vector<Task> tasks = make_tasks(sizes);
  parallel_for(pool, static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const Task& task = tasks[t];
    float* chunk_slots[kMaxSlots];
    for (int64_t s = 0; s < n_slots; ++s) chunk_slots[s] = slots[task.leaf * kMaxSlots + s] + task.begin;
    kernels[variants[task.leaf]](g[task.leaf] + task.begin, w[task.leaf] + task.begin, chunk_slots, table,
                                 task.end - task.begin);
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" void jaxreg_register_kernels(const char* id, const Kernel* kernels, int64_t n) {
  std::lock_guard<std::mutex> lock(registry_mu);
  registry()[id] = std::vector<Kernel>(kernels, kernels + n);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxreg_sumsq, SumSquares,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().RemainingArgs().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxreg_step, Step,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("kernel")
                                  .Attr<ffi::Span<const int64_t>>("variants")
                                  .Attr<int64_t>("n_slots"));
