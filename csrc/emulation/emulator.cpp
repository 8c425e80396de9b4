// The CUDA emulator's scheduler (see cuda_emulation.h): the threads of one block as fibers on the
// calling OS thread, switched at barriers and warp intrinsics only.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cuda_emulation.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_THREAD__)
#define LOGITOPS_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LOGITOPS_EMU_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define LOGITOPS_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LOGITOPS_EMU_ASAN 1
#endif
#endif

#ifdef LOGITOPS_EMU_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif
#ifdef LOGITOPS_EMU_ASAN
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old,
                                     size_t* size_old);
void __asan_unpoison_memory_region(const volatile void* addr, size_t size);
}
#endif

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores its pointer in *from and resumes
// the stack `to` (System V ABI: nothing else survives a call).
extern "C" void logitops_emulation_switch(void** from, void* to);
asm(R"(
  .text
  .globl logitops_emulation_switch
  .hidden logitops_emulation_switch
  .type logitops_emulation_switch, @function
logitops_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size logitops_emulation_switch, .-logitops_emulation_switch
)");
#endif

namespace logitops {
namespace emulation {
namespace {

// The emulator's own bookkeeping (fiber states, deposits, the scheduler's variables) is shared by
// all fibers without the kernel's synchronization: ThreadSanitizer must not see it, only the
// kernels' accesses and the happens-before edges that barriers and warp exchanges publish. A
// scope never spans a fiber switch (the ignore count is per fiber).
struct IgnoreScope {
#ifdef LOGITOPS_EMU_TSAN
  IgnoreScope() { __tsan_ignore_thread_begin(); }
  ~IgnoreScope() { __tsan_ignore_thread_end(); }
#else
  IgnoreScope() {}  // user-provided: no unused-variable warnings for the scopes
  ~IgnoreScope() {}
#endif
  IgnoreScope(const IgnoreScope&) = delete;
  IgnoreScope& operator=(const IgnoreScope&) = delete;
};

#ifdef LOGITOPS_EMU_ASAN
constexpr size_t kStackBytes = 512 * 1024;
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif

enum class State { kReady, kAtBarrier, kAtWarpOp, kDone };

struct Fiber {
  uint3 thread_idx{};
  unsigned warp = 0, lane = 0;
  State state = State::kReady;
  char* stack = nullptr;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t context{};
#endif
  unsigned warp_op_generation = 0;  // of the warp operation it waits in, or last took part in
  unsigned barrier_generation = 0;
#ifdef LOGITOPS_EMU_TSAN
  void* tsan_fiber = nullptr;
#endif
#ifdef LOGITOPS_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

// A warp operation that some lanes of a warp have reached and the others of its mask have not.
struct PendingWarpOp {
  unsigned mask = 0;     // 0 for __activemask: whoever arrives before the block stalls
  unsigned arrived = 0;  // lanes that have deposited
  const char* what = nullptr;
  uint64_t deposits[kWarpLanes] = {};
  unsigned generation = 0;  // the warp's count of operations when this one began
};

struct Block {
  const char* kernel = nullptr;
  uint3 block_idx{};
  dim3 block_dim, grid_dim;
  std::vector<Fiber>* fibers = nullptr;
  std::vector<std::vector<PendingWarpOp>> warp_ops;  // per warp
  std::vector<unsigned> warp_generations;            // operations begun, per warp
  // The last operations completed, per warp, by generation modulo 4: a lane reads its result
  // right after it resumes, before any other fiber runs.
  std::vector<std::array<PendingWarpOp, 4>> completed_warp_ops;
  size_t current = 0;
  size_t done = 0;
  size_t at_barrier = 0;
  unsigned barrier_generation = 0;
  std::string failure;
#if defined(__x86_64__)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_context{};
#endif
  // Addresses whose release / acquire publish the happens-before edges of __syncthreads (by
  // generation parity) and of each warp's exchanges, for ThreadSanitizer.
  char barrier_token[2] = {};
  std::vector<char> warp_tokens;
#ifdef LOGITOPS_EMU_TSAN
  void* scheduler_fiber = nullptr;
#endif
#ifdef LOGITOPS_EMU_ASAN
  void* fake_stack = nullptr;  // the scheduler's
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

// The block being run. A plain global: launches hold g_launch_mutex, and a launch runs all its
// fibers on the calling thread.
Block* g_block = nullptr;
std::mutex g_launch_mutex;  // one launch at a time: __shared__ variables are function statics
#ifdef LOGITOPS_EMU_TSAN
// A block's threads start after everything before the block (host code, earlier blocks), and
// everything after it waits for all of them to end; the threads of one block are not ordered.
char g_block_start_token;
char g_block_end_token;
#endif

// The traffic log (see start_traffic_log): each access of the running launch as an address range,
// merged when the launch ends.
struct TrafficRecorder {
  bool open = false;
  std::vector<LaunchTraffic> log;
  std::vector<std::pair<uintptr_t, uintptr_t>> reads, writes;  // [begin, end)
  uint64_t bytes_read = 0, bytes_written = 0;
};
TrafficRecorder g_traffic;
std::mutex g_traffic_mutex;  // start / stop may come from another thread than a launch's

// Bytes covered by the union of the ranges (sorted in place).
uint64_t distinct_bytes(std::vector<std::pair<uintptr_t, uintptr_t>>& ranges) {
  std::sort(ranges.begin(), ranges.end());
  uint64_t total = 0;
  uintptr_t covered = 0;  // end of the union so far
  for (const auto& [begin, end] : ranges) {
    const uintptr_t from = std::max(begin, covered);
    if (end > from) total += end - from;
    covered = std::max(covered, end);
  }
  return total;
}

Fiber& current_fiber() {
  if (g_block == nullptr) throw std::logic_error("CUDA emulation: device code outside a kernel");
  return (*g_block->fibers)[g_block->current];
}

std::string describe_thread(const Block& block, const Fiber& fiber) {
  std::ostringstream out;
  out << "kernel " << block.kernel << ", block (" << block.block_idx.x << ", " << block.block_idx.y
      << ", " << block.block_idx.z << "), thread (" << fiber.thread_idx.x << ", "
      << fiber.thread_idx.y << ", " << fiber.thread_idx.z << ")";
  return out.str();
}

// From the running fiber to the next ready fiber of the block (round robin), or to the scheduler
// when none is ready (it then resolves a stall or ends the block). `from` is null when the running
// fiber has exited: its stack is not coming back.
void switch_away(Fiber* from) {
  // Everything the switch needs is read here, inside the scope: after __tsan_switch_to_fiber this
  // code counts as the target fiber's.
  void* unused = nullptr;
  [[maybe_unused]] void** save = &unused;
  [[maybe_unused]] void* target_sp = nullptr;
  [[maybe_unused]] const void* target_stack = nullptr;
  [[maybe_unused]] size_t target_stack_size = 0;
  [[maybe_unused]] void* target_tsan = nullptr;
  [[maybe_unused]] void** fake_stack_save = nullptr;
  [[maybe_unused]] void* fake_stack = nullptr;
#if !defined(__x86_64__)
  ucontext_t* target_context = nullptr;
  ucontext_t* save_context = nullptr;
#endif
  {
    IgnoreScope ignore;
    Block* block = g_block;
    auto& fibers = *block->fibers;
    const size_t n = fibers.size();
    Fiber* to = nullptr;
    if (block->failure.empty()) {
      for (size_t step = 1; step <= n; ++step) {
        const size_t k = (block->current + step) % n;
        if (fibers[k].state == State::kReady) {
          to = &fibers[k];
          block->current = k;
          break;
        }
      }
    }
#if defined(__x86_64__)
    if (from != nullptr) save = &from->sp;
    target_sp = to != nullptr ? to->sp : block->scheduler_sp;
#else
    target_context = to != nullptr ? &to->context : &block->scheduler_context;
    save_context = from != nullptr ? &from->context : nullptr;
#endif
#ifdef LOGITOPS_EMU_TSAN
    target_tsan = to != nullptr ? to->tsan_fiber : block->scheduler_fiber;
#endif
#ifdef LOGITOPS_EMU_ASAN
    target_stack = to != nullptr ? to->stack : block->scheduler_stack_bottom;
    target_stack_size = to != nullptr ? kStackBytes : block->scheduler_stack_size;
    if (from != nullptr) fake_stack_save = &from->fake_stack;
#endif
  }
#ifdef LOGITOPS_EMU_ASAN
  __sanitizer_start_switch_fiber(fake_stack_save, target_stack, target_stack_size);
#endif
#ifdef LOGITOPS_EMU_TSAN
  // The last access of an exited fiber: after everything it did, even on its stack.
  if (from == nullptr) __tsan_release(&g_block_end_token);
  __tsan_switch_to_fiber(target_tsan, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
#if defined(__x86_64__)
  logitops_emulation_switch(save, target_sp);
#else
  if (save_context != nullptr) {
    swapcontext(save_context, target_context);
  } else {
    setcontext(target_context);
  }
#endif
  if (from == nullptr) std::abort();  // an exited fiber is never resumed
#ifdef LOGITOPS_EMU_ASAN
  {
    IgnoreScope ignore;
    fake_stack = from->fake_stack;
  }
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

void yield_to_scheduler() {
  Fiber* fiber;
  {
    IgnoreScope ignore;
    fiber = &current_fiber();
  }
  switch_away(fiber);
}

[[noreturn]] void fiber_exit() {
  {
    IgnoreScope ignore;
    current_fiber().state = State::kDone;
    ++g_block->done;
  }
  switch_away(nullptr);  // it also publishes the fiber's end to the next block
  std::abort();
}

const std::function<void()>* g_body = nullptr;

void fiber_main() {
#ifdef LOGITOPS_EMU_ASAN
  // A new fiber has no fake stack to restore. The first one is started by the scheduler: that
  // tells the scheduler's stack bounds.
  const void* old_bottom = nullptr;
  size_t old_size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &old_bottom, &old_size);
  if (g_block->scheduler_stack_bottom == nullptr) {
    g_block->scheduler_stack_bottom = old_bottom;
    g_block->scheduler_stack_size = old_size;
  }
#endif
#ifdef LOGITOPS_EMU_TSAN
  __tsan_acquire(&g_block_start_token);
#endif
  const std::function<void()>* body;
  {
    IgnoreScope ignore;
    body = g_body;
  }
  {
    // Scoped: fiber_exit never returns, so nothing may be left to destroy in this frame.
    std::string failure;
    try {
      (*body)();
    } catch (const std::exception& error) {
      failure = error.what();
    } catch (...) {
      failure = "unknown exception";
    }
    if (!failure.empty()) {
      IgnoreScope ignore;
      if (g_block->failure.empty()) g_block->failure = failure;
    }
  }
  fiber_exit();
}

#if defined(__x86_64__)
extern "C" void logitops_emulation_fiber_entry() { fiber_main(); }
#else
void fiber_entry_ucontext() { fiber_main(); }
#endif

void prepare_fiber(Fiber& fiber, char* stack) {
  fiber.stack = stack;
#ifdef LOGITOPS_EMU_ASAN
  // The frames of an earlier fiber on this stack ended without unwinding: clear their redzones.
  __asan_unpoison_memory_region(stack, kStackBytes);
#endif
#if defined(__x86_64__)
  // The frame logitops_emulation_switch pops: six registers, then the entry as return address,
  // above it a null return address for the entry itself (16-byte aligned, as after a call).
  auto top = reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<void**>(top);
  *--slot = nullptr;
  *--slot = reinterpret_cast<void*>(&logitops_emulation_fiber_entry);
  for (int k = 0; k < 6; ++k) *--slot = nullptr;
  fiber.sp = slot;
#else
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = stack;
  fiber.context.uc_stack.ss_size = kStackBytes;
  fiber.context.uc_link = nullptr;
  makecontext(&fiber.context, fiber_entry_ucontext, 0);
#endif
}

// Scheduler -> fiber `index`, until it yields or exits.
void resume(Block& block, size_t index) {
  block.current = index;
  Fiber& fiber = (*block.fibers)[index];
#ifdef LOGITOPS_EMU_ASAN
  __sanitizer_start_switch_fiber(&block.fake_stack, fiber.stack, kStackBytes);
#endif
#if defined(__x86_64__)
  void* const target = fiber.sp;
#endif
#ifdef LOGITOPS_EMU_TSAN
  // From here on this code runs as the fiber for ThreadSanitizer: only the (uninstrumented)
  // assembly below touches memory.
  __tsan_switch_to_fiber(fiber.tsan_fiber, 1);
#endif
#if defined(__x86_64__)
  logitops_emulation_switch(&block.scheduler_sp, target);
#else
  swapcontext(&block.scheduler_context, &fiber.context);
#endif
#ifdef LOGITOPS_EMU_ASAN
  __sanitizer_finish_switch_fiber(block.fake_stack, nullptr, nullptr);
#endif
}

void complete_warp_op(Block& block, unsigned warp, size_t op_index) {
  auto& slot = block.completed_warp_ops[warp][block.warp_ops[warp][op_index].generation % 4];
  slot = block.warp_ops[warp][op_index];
  block.warp_ops[warp].erase(block.warp_ops[warp].begin() + op_index);
  auto& fibers = *block.fibers;
  const size_t base = size_t(warp) * kWarpLanes;
  for (unsigned lane = 0; lane < kWarpLanes; ++lane) {
    if (slot.arrived >> lane & 1u) fibers[base + lane].state = State::kReady;
  }
}

// When no fiber can run: an __activemask gathering completes with the lanes it has; otherwise
// the block is stuck, and the message says where each waiting thread is.
bool resolve_stall(Block& block) {
  for (unsigned warp = 0; warp < block.warp_ops.size(); ++warp) {
    auto& ops = block.warp_ops[warp];
    for (size_t k = 0; k < ops.size(); ++k) {
      if (ops[k].mask == 0) {
        complete_warp_op(block, warp, k);
        return true;
      }
    }
  }
  std::ostringstream out;
  out << "kernel " << block.kernel << ", block (" << block.block_idx.x << ", " << block.block_idx.y
      << ", " << block.block_idx.z << "): deadlock: ";
  const size_t total = block.fibers->size();
  if (block.at_barrier > 0) {
    out << "__syncthreads reached by " << block.at_barrier << " of " << total << " threads ("
        << block.done << " exited without reaching it)";
  }
  for (unsigned warp = 0; warp < block.warp_ops.size(); ++warp) {
    for (const auto& op : block.warp_ops[warp]) {
      out << (block.at_barrier > 0 ? "; " : "") << op.what << " in warp " << warp << " with mask 0x"
          << std::hex << op.mask << " reached by lanes 0x" << op.arrived << std::dec << " only";
    }
  }
  block.failure = out.str();
  return false;
}

void run_block(Block& block, std::vector<Fiber>& fibers, char* stacks) {
  IgnoreScope ignore;  // the scheduler's own work; resumed fibers keep their own count
  const size_t total = fibers.size();
  for (size_t k = 0; k < total; ++k) {
    Fiber& fiber = fibers[k];
    fiber.state = State::kReady;
    fiber.barrier_generation = 0;
    prepare_fiber(fiber, stacks + k * kStackBytes);
  }
  block.fibers = &fibers;
  block.done = block.at_barrier = 0;
  block.barrier_generation = 0;
  block.warp_ops.assign((total + kWarpLanes - 1) / kWarpLanes, {});
  block.warp_generations.assign(block.warp_ops.size(), 0);
  block.completed_warp_ops.resize(block.warp_ops.size());
#ifdef LOGITOPS_EMU_TSAN
  __tsan_acquire(&g_block_end_token);
  __tsan_release(&g_block_start_token);
#endif
  while (block.done < total && block.failure.empty()) {
    bool ran = false;
    for (size_t k = 0; k < total && block.failure.empty(); ++k) {
      if (fibers[k].state != State::kReady) continue;
      resume(block, k);
      ran = true;
    }
    if (!ran && block.failure.empty() && block.done < total && !resolve_stall(block)) break;
  }
#ifdef LOGITOPS_EMU_TSAN
  __tsan_acquire(&g_block_end_token);
#endif
}

struct Pool {
  std::vector<Fiber> fibers;
  std::unique_ptr<char[]> stacks;
  size_t capacity = 0;
};

Pool& pool_for(size_t threads) {
  static Pool pool;
  if (pool.capacity < threads) {
    pool.stacks.reset(new char[threads * kStackBytes]);
    pool.capacity = threads;
  }
  pool.fibers.assign(threads, Fiber{});
  return pool;
}

void check_launch(const char* kernel, dim3 grid, dim3 block, size_t shared_memory) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  std::ostringstream out;
  out << "kernel " << kernel << ": invalid launch: ";
  if (threads == 0 || threads > uint64_t(kMaxThreadsPerBlock)) {
    out << "block of " << threads << " threads (1 to " << kMaxThreadsPerBlock << ")";
  } else if (block.x % kWarpLanes != 0 || block.y != 1 || block.z != 1) {
    out << "block (" << block.x << ", " << block.y << ", " << block.z
        << ") is not a whole number of warps along x (the kernels' reductions rely on it)";
  } else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535u ||
             grid.z > 65535u) {
    out << "grid (" << grid.x << ", " << grid.y << ", " << grid.z << ")";
  } else if (shared_memory > kSharedMemoryPerBlock) {
    out << shared_memory << " bytes of dynamic shared memory (at most " << kSharedMemoryPerBlock
        << " without opting in)";
  } else {
    return;
  }
  throw std::invalid_argument(out.str());
}

}  // namespace

uint3 thread_index() {
  IgnoreScope ignore;
  return current_fiber().thread_idx;
}
uint3 block_index() {
  IgnoreScope ignore;
  return g_block->block_idx;
}
dim3 block_dim() {
  IgnoreScope ignore;
  return g_block->block_dim;
}
dim3 grid_dim() {
  IgnoreScope ignore;
  return g_block->grid_dim;
}
unsigned lane_id() {
  IgnoreScope ignore;
  return current_fiber().lane;
}

[[noreturn]] void fail(const std::string& message) {
  std::string where;
  {
    IgnoreScope ignore;
    if (g_block != nullptr) where = describe_thread(*g_block, current_fiber()) + ": ";
  }
  throw std::runtime_error((where.empty() ? "CUDA emulation: " : where) + message);
}

void sync_block() {
  bool wait;
  void* token;
  {
    IgnoreScope ignore;
    Block& block = *g_block;
    token = &block.barrier_token[block.barrier_generation & 1u];
    wait = ++block.at_barrier != block.fibers->size();
    if (wait) {
      current_fiber().state = State::kAtBarrier;
    } else {
      // The last thread to arrive opens the barrier for everyone and goes on.
      block.at_barrier = 0;
      ++block.barrier_generation;
      for (Fiber& other : *block.fibers) {
        if (other.state == State::kAtBarrier) other.state = State::kReady;
      }
    }
  }
#ifdef LOGITOPS_EMU_TSAN
  __tsan_release(token);
#endif
  if (wait) yield_to_scheduler();
#ifdef LOGITOPS_EMU_TSAN
  __tsan_acquire(token);
#else
  (void)token;
#endif
}

namespace {

// Deposits the lane's word into its warp's pending operation; true when that completes the
// operation (every lane's result copied), false when the lane must wait for the others. *token:
// the operation's happens-before address (by the parity of its generation).
bool deposit(unsigned mask, uint64_t word, const char* what, void** token) {
  IgnoreScope ignore;
  Block& block = *g_block;
  Fiber& fiber = current_fiber();
  const unsigned bit = 1u << fiber.lane;
  if (mask != 0 && !(mask & bit)) fail(std::string(what) + " called by a lane outside its mask");
  const size_t warp_size =
      std::min<size_t>(kWarpLanes, block.fibers->size() - fiber.warp * kWarpLanes);
  const unsigned existing = warp_size == kWarpLanes ? ~0u : (1u << warp_size) - 1u;
  if (mask & ~existing) fail(std::string(what) + " names lanes the block does not have");
  auto& ops = block.warp_ops[fiber.warp];
  PendingWarpOp* op = nullptr;
  for (auto& candidate : ops) {
    if (candidate.mask == mask) {
      op = &candidate;
    } else if (candidate.mask & mask) {
      std::ostringstream out;
      out << what << " with mask 0x" << std::hex << mask << " while lanes 0x" << candidate.arrived
          << " wait in " << candidate.what << " with the overlapping mask 0x" << candidate.mask;
      fail(out.str());
    }
  }
  if (op == nullptr) {
    ops.push_back(PendingWarpOp{mask, 0, what, {}, block.warp_generations[fiber.warp]++});
    op = &ops.back();
  } else if (std::strcmp(op->what, what) != 0) {
    fail(std::string(what) + " meets " + op->what + " of the same mask in other lanes (divergent)");
  }
  if (op->arrived & bit) fail(std::string(what) + " reached twice by one lane");
  op->deposits[fiber.lane] = word;
  op->arrived |= bit;
  *token = &block.warp_tokens[2 * fiber.warp + (op->generation & 1u)];
  fiber.warp_op_generation = op->generation;
  // __activemask completes at once when every lane of the warp that has not exited is there.
  unsigned live = 0;
  if (mask == 0) {
    for (unsigned lane = 0; lane < warp_size; ++lane) {
      if ((*block.fibers)[fiber.warp * kWarpLanes + lane].state != State::kDone) live |= 1u << lane;
    }
  }
  if ((mask != 0 && op->arrived == mask) || (mask == 0 && op->arrived == live)) {
    complete_warp_op(block, fiber.warp, size_t(op - ops.data()));
    return true;
  }
  fiber.state = State::kAtWarpOp;
  return false;
}

}  // namespace

WarpView warp_exchange(unsigned mask, uint64_t word, const char* what) {
  void* token = nullptr;
  // The others of the operation run only once this lane yields (or, if it completes the
  // operation, goes on to its next one): releasing after the deposit is still in time.
  const bool complete = deposit(mask, word, what, &token);
#ifdef LOGITOPS_EMU_TSAN
  __tsan_release(token);
#endif
  if (!complete) yield_to_scheduler();
#ifdef LOGITOPS_EMU_TSAN
  __tsan_acquire(token);
#else
  (void)token;
#endif
  IgnoreScope ignore;
  const Fiber& fiber = current_fiber();
  if (fiber.state != State::kReady) fail(std::string(what) + ": resumed before completion");
  const PendingWarpOp& done = g_block->completed_warp_ops[fiber.warp][fiber.warp_op_generation % 4];
  if (done.generation != fiber.warp_op_generation || std::strcmp(done.what, what) != 0) {
    fail(std::string(what) + ": its result was overwritten by later operations of other lanes");
  }
  return {done.deposits, done.arrived};
}

unsigned active_lanes() { return warp_exchange(0u, 0, "__activemask").arrived; }

void start_traffic_log() {
  std::lock_guard<std::mutex> lock(g_traffic_mutex);
  g_traffic = TrafficRecorder{};
  g_traffic.open = true;
}

std::vector<LaunchTraffic> stop_traffic_log() {
  std::lock_guard<std::mutex> lock(g_traffic_mutex);
  g_traffic.open = false;
  return std::move(g_traffic.log);
}

void record_access(const void* address, size_t bytes, bool write) {
  IgnoreScope ignore;
  std::lock_guard<std::mutex> lock(g_traffic_mutex);
  if (!g_traffic.open || g_block == nullptr) return;
  const auto begin = reinterpret_cast<uintptr_t>(address);
  (write ? g_traffic.writes : g_traffic.reads).emplace_back(begin, begin + bytes);
  (write ? g_traffic.bytes_written : g_traffic.bytes_read) += bytes;
}

int max_active_blocks(int block_threads, size_t dynamic_shared_memory) {
  if (block_threads <= 0) return 0;
  int blocks = std::min(kMaxBlocksPerSm, kMaxThreadsPerSm / block_threads);
  if (dynamic_shared_memory > 0) {
    blocks = std::min<int>(blocks, int(kSharedMemoryPerSm / dynamic_shared_memory));
  }
  return blocks;
}

void launch(const char* kernel_name, dim3 grid, dim3 block_dim, size_t dynamic_shared_memory,
            const std::function<void()>& body) {
  check_launch(kernel_name, grid, block_dim, dynamic_shared_memory);
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  IgnoreScope ignore;  // the emulator's bookkeeping
  const size_t threads = size_t(block_dim.x) * block_dim.y * block_dim.z;
  Pool& pool = pool_for(threads);
  Block block;
  block.kernel = kernel_name;
  block.block_dim = block_dim;
  block.grid_dim = grid;
  for (size_t k = 0; k < threads; ++k) {
    Fiber& fiber = pool.fibers[k];
    fiber.thread_idx = {unsigned(k % block_dim.x), unsigned(k / block_dim.x % block_dim.y),
                        unsigned(k / (size_t(block_dim.x) * block_dim.y))};
    fiber.warp = unsigned(k / kWarpLanes);
    fiber.lane = unsigned(k % kWarpLanes);
  }
  block.warp_tokens.assign(2 * ((threads + kWarpLanes - 1) / kWarpLanes), 0);
#ifdef LOGITOPS_EMU_TSAN
  block.scheduler_fiber = __tsan_get_current_fiber();
  for (auto& fiber : pool.fibers) fiber.tsan_fiber = __tsan_create_fiber(0);
#endif
  Block* outer = g_block;
  const std::function<void()>* outer_body = g_body;
  g_block = &block;
  g_body = &body;
  for (unsigned z = 0; z < grid.z && block.failure.empty(); ++z) {
    for (unsigned y = 0; y < grid.y && block.failure.empty(); ++y) {
      for (unsigned x = 0; x < grid.x && block.failure.empty(); ++x) {
        block.block_idx = {x, y, z};
        run_block(block, pool.fibers, pool.stacks.get());
      }
    }
  }
  g_block = outer;
  g_body = outer_body;
#ifdef LOGITOPS_EMU_TSAN
  for (auto& fiber : pool.fibers) __tsan_destroy_fiber(fiber.tsan_fiber);
#endif
  {
    std::lock_guard<std::mutex> traffic_lock(g_traffic_mutex);
    if (g_traffic.open) {
      LaunchTraffic entry;
      entry.kernel = kernel_name;
      entry.bytes_read = g_traffic.bytes_read;
      entry.bytes_written = g_traffic.bytes_written;
      entry.distinct_read = distinct_bytes(g_traffic.reads);
      entry.distinct_written = distinct_bytes(g_traffic.writes);
      g_traffic.log.push_back(std::move(entry));
    }
    g_traffic.reads.clear();
    g_traffic.writes.clear();
    g_traffic.bytes_read = g_traffic.bytes_written = 0;
  }
  if (!block.failure.empty()) throw std::runtime_error("CUDA emulation: " + block.failure);
}

}  // namespace emulation
}  // namespace logitops
