// The simulated `npu` device: a PrivateUse1 backend whose memory is host memory.
//
// What it provides to torch (all registered when the library is loaded):
// * an allocator (64-byte aligned host memory, per-device byte counters) whose DataPtr context
//   carries the device metadata torch_npu keeps per storage: the ACL storage format;
// * a device guard (current device per thread, streams and events; every kernel runs synchronously
//   on the host, so streams are ordering labels and events are host timestamps);
// * hooks (is_available, generators, storage resize);
// * the few aten kernels that must know the device (factories, copies across devices, resize, set_,
//   clone keeping the format) and a boxed fallback for every other aten op: it views the npu
//   tensors as CPU tensors over the same memory, runs the CPU kernel, and gives the results back
//   as npu tensors over the memory the CPU kernel wrote (no copy either way);
// * a fallthrough for AutocastPrivateUse1, so torch.autocast("npu") changes nothing but runs.
#include <torch/extension.h>

#include <ATen/EmptyTensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/set_native.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace npu_sim {

constexpr c10::DeviceType kNpu = c10::DeviceType::PrivateUse1;
constexpr int kMaxDevices = 64;
constexpr int64_t kFormatND = 2;

std::atomic<int> g_device_count{8};
thread_local c10::DeviceIndex t_current_device = 0;

// ---------------------------------------------------------------- memory + per-storage metadata
struct DeviceStats {
  std::atomic<int64_t> allocated{0};
  std::atomic<int64_t> peak{0};
};
std::array<DeviceStats, kMaxDevices> g_stats;

void count_alloc(int dev, int64_t n) {
  auto now = g_stats[dev].allocated.fetch_add(n) + n;
  auto peak = g_stats[dev].peak.load();
  while (now > peak && !g_stats[dev].peak.compare_exchange_weak(peak, now)) {
  }
}

// The context of every npu DataPtr: who owns the bytes, and the device metadata of the storage.
struct BlockContext {
  void* data = nullptr;
  int64_t nbytes = 0;
  int device = 0;
  int64_t format = kFormatND;
  c10::Storage borrowed;  // set when the bytes belong to a CPU storage a CPU kernel produced
};

void delete_block(void* ctx_ptr) {
  auto* ctx = static_cast<BlockContext*>(ctx_ptr);
  g_stats[ctx->device].allocated.fetch_sub(ctx->nbytes);
  if (!ctx->borrowed) std::free(ctx->data);
  delete ctx;
}

BlockContext* block_of(const c10::Storage& storage) {
  const auto& dp = storage.data_ptr();
  if (dp.get_deleter() != &delete_block) return nullptr;
  return static_cast<BlockContext*>(dp.get_context());
}

void check_index(c10::DeviceIndex index) {
  int count = g_device_count.load();
  TORCH_CHECK(index >= 0 && index < count, "Invalid device: npu:", static_cast<int>(index),
              " does not exist; the simulated npu has ", count, " device(s) (npu:0 .. npu:", count - 1,
              "). Invalid device ordinal.");
}

struct HostAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t nbytes) override {
    int dev = t_current_device;
    void* data = nullptr;
    if (nbytes > 0) {
      size_t rounded = (nbytes + 63) / 64 * 64;
      data = std::aligned_alloc(64, rounded);
      TORCH_CHECK(data != nullptr, "simulated npu: out of host memory allocating ", nbytes, " bytes");
    }
    auto* ctx = new BlockContext{data, static_cast<int64_t>(nbytes), dev, kFormatND, {}};
    count_alloc(dev, ctx->nbytes);
    return {data, ctx, &delete_block, c10::Device(kNpu, static_cast<c10::DeviceIndex>(dev))};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};
HostAllocator g_allocator;
REGISTER_ALLOCATOR(kNpu, &g_allocator);

// ---------------------------------------------------------------- device guard, streams, events
struct EventRecord {
  double ms = 0.0;
  int64_t stream_id = 0;
};

double now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

thread_local std::array<c10::StreamId, kMaxDevices> t_current_stream{};
std::atomic<c10::StreamId> g_next_stream{1};

struct GuardImpl final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kNpu; }
  c10::Device exchangeDevice(c10::Device d) const override {
    auto old = getDevice();
    setDevice(d);
    return old;
  }
  c10::Device getDevice() const override { return c10::Device(kNpu, t_current_device); }
  void setDevice(c10::Device d) const override {
    TORCH_CHECK(d.type() == kNpu, "expected an npu device, got ", d);
    if (d.index() < 0) return;
    check_index(d.index());
    t_current_device = d.index();
  }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    if (d.index() >= 0 && d.index() < g_device_count.load()) t_current_device = d.index();
  }
  c10::Stream getStream(c10::Device d) const override {
    auto idx = d.index() < 0 ? t_current_device : d.index();
    return c10::Stream(c10::Stream::UNSAFE, c10::Device(kNpu, idx), t_current_stream[idx]);
  }
  c10::Stream getDefaultStream(c10::Device d) const override {
    return c10::Stream(c10::Stream::DEFAULT, d);
  }
  c10::Stream getStreamFromGlobalPool(c10::Device d, bool = false) const override { return getNewStream(d); }
  c10::Stream getNewStream(c10::Device d, int = 0) const override {
    auto idx = d.index() < 0 ? t_current_device : d.index();
    return c10::Stream(c10::Stream::UNSAFE, c10::Device(kNpu, idx), g_next_stream.fetch_add(1));
  }
  c10::Stream exchangeStream(c10::Stream s) const override {
    auto idx = s.device_index() < 0 ? t_current_device : s.device_index();
    auto old = c10::Stream(c10::Stream::UNSAFE, c10::Device(kNpu, idx), t_current_stream[idx]);
    t_current_stream[idx] = s.id();
    return old;
  }
  c10::DeviceIndex deviceCount() const noexcept override {
    return static_cast<c10::DeviceIndex>(g_device_count.load());
  }
  void destroyEvent(void* event, const c10::DeviceIndex) const noexcept override {
    delete static_cast<EventRecord*>(event);
  }
  void record(void** event, const c10::Stream& stream, const c10::DeviceIndex,
              const c10::EventFlag) const override {
    if (*event == nullptr) *event = new EventRecord();
    auto* rec = static_cast<EventRecord*>(*event);
    rec->ms = now_ms();  // all work before this point has already run on the host
    rec->stream_id = stream.id();
  }
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeEvent(void*) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
  void recordDataPtrOnStream(const c10::DataPtr&, const c10::Stream&) const override {}
  double elapsedTime(void* start, void* end, const c10::DeviceIndex) const override {
    TORCH_CHECK(start && end, "elapsed_time: both events must have been recorded");
    return static_cast<EventRecord*>(end)->ms - static_cast<EventRecord*>(start)->ms;
  }
};
C10_REGISTER_GUARD_IMPL(PrivateUse1, GuardImpl);

// ---------------------------------------------------------------- hooks
void resize_storage_bytes(c10::StorageImpl* storage, size_t nbytes) {
  TORCH_CHECK(storage->resizable(), "Trying to resize storage that is not resizable");
  c10::DataPtr fresh;
  {
    c10::DeviceIndex saved = t_current_device;
    t_current_device = storage->device().index() < 0 ? saved : storage->device().index();
    fresh = g_allocator.allocate(nbytes);
    t_current_device = saved;
  }
  auto copy = std::min<size_t>(nbytes, storage->nbytes());
  if (copy > 0) std::memcpy(fresh.get(), storage->data(), copy);
  storage->set_data_ptr_noswap(std::move(fresh));
  storage->set_nbytes(nbytes);
}

struct Hooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    return at::detail::getDefaultCPUGenerator();  // random numbers are drawn as on the CPU
  }
  at::Generator getNewGenerator(c10::DeviceIndex) const override {
    return at::detail::createCPUGenerator();
  }
  at::Device getDeviceFromPtr(void*) const override { return c10::Device(kNpu, t_current_device); }
  bool isPinnedPtr(const void*) const override { return false; }
  at::Allocator* getPinnedMemoryAllocator() const override { return c10::GetCPUAllocator(); }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return static_cast<c10::DeviceIndex>(g_device_count.load()); }
  void setCurrentDevice(c10::DeviceIndex d) const override { check_index(d); t_current_device = d; }
  c10::DeviceIndex getCurrentDevice() const override { return t_current_device; }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const override {
    resize_storage_bytes(storage.unsafeGetStorageImpl(), newsize);
  }
};
Hooks g_hooks;

// ---------------------------------------------------------------- host views and device wraps
// A CPU tensor over the memory of an npu tensor: same bytes, sizes, strides and storage offset; its
// storage holds a reference to the npu storage, so the memory stays alive as long as the view.
at::Tensor host_view(const at::Tensor& t) {
  TORCH_CHECK(t.device().type() == kNpu, "host_view expects an npu tensor, got ", t.device());
  c10::Storage npu_storage = t.storage();
  auto* keep = new c10::Storage(npu_storage);
  c10::DataPtr dp(npu_storage.mutable_data(), keep,
                  [](void* ctx) { delete static_cast<c10::Storage*>(ctx); }, c10::Device(c10::kCPU));
  c10::Storage cpu_storage(c10::Storage::use_byte_size_t(), npu_storage.nbytes(), std::move(dp),
                           c10::GetCPUAllocator(), /*resizable=*/true);
  auto out = at::detail::make_tensor<c10::TensorImpl>(std::move(cpu_storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                       t.dtype());
  out.unsafeGetTensorImpl()->set_sizes_and_strides(t.sizes(), t.strides(), t.storage_offset());
  return out;
}

// An npu storage over the bytes of a CPU storage (kept alive by the npu storage's context).
c10::Storage wrap_cpu_storage(const c10::Storage& cpu, c10::DeviceIndex dev) {
  auto* ctx = new BlockContext{cpu.mutable_data(), static_cast<int64_t>(cpu.nbytes()), dev, kFormatND, cpu};
  count_alloc(dev, ctx->nbytes);
  c10::DataPtr dp(ctx->data, ctx, &delete_block, c10::Device(kNpu, dev));
  return c10::Storage(c10::Storage::use_byte_size_t(), cpu.nbytes(), std::move(dp), &g_allocator, true);
}

at::Tensor tensor_on_storage(const c10::Storage& storage, const at::Tensor& layout_of) {
  auto out = at::detail::make_tensor<c10::TensorImpl>(c10::Storage(storage),
                                                       c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                                       layout_of.dtype());
  out.unsafeGetTensorImpl()->set_sizes_and_strides(layout_of.sizes(), layout_of.strides(),
                                                   layout_of.storage_offset());
  return out;
}

// ---------------------------------------------------------------- kernels that must know the device
at::Tensor empty_memory_format(c10::IntArrayRef size, std::optional<at::ScalarType> dtype,
                               std::optional<at::Layout> layout, std::optional<at::Device> device,
                               std::optional<bool> pin_memory, std::optional<at::MemoryFormat> memory_format) {
  c10::DeviceGuard guard(device.value_or(c10::Device(kNpu, t_current_device)));
  constexpr c10::DispatchKeySet keys(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_generic(size, &g_allocator, keys, c10::dtype_or_default(dtype), memory_format);
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride, std::optional<at::ScalarType> dtype,
                         std::optional<at::Layout> layout, std::optional<at::Device> device,
                         std::optional<bool> pin_memory) {
  c10::DeviceGuard guard(device.value_or(c10::Device(kNpu, t_current_device)));
  constexpr c10::DispatchKeySet keys(c10::DispatchKey::PrivateUse1);
  return at::detail::empty_strided_generic(size, stride, &g_allocator, keys, c10::dtype_or_default(dtype));
}

at::Tensor as_cpu(const at::Tensor& t) { return t.device().type() == kNpu ? host_view(t) : t; }

at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool non_blocking) {
  TORCH_CHECK(self.sizes() == dst.sizes(), "copy between devices: sizes differ ", self.sizes(), " vs ", dst.sizes());
  as_cpu(dst).copy_(as_cpu(self), false);
  return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  dst.resize_(self.sizes());
  return copy_from(self, dst, false);
}

const at::Tensor& resize_(const at::Tensor& self, c10::IntArrayRef size,
                          std::optional<at::MemoryFormat> memory_format) {
  auto* impl = self.unsafeGetTensorImpl();
  int64_t itemsize = self.dtype().itemsize();
  size_t needed = at::detail::computeStorageNbytesContiguous(size, itemsize, self.storage_offset());
  if (needed > self.storage().nbytes()) resize_storage_bytes(self.storage().unsafeGetStorageImpl(), needed);
  at::native::resize_impl_cpu_(impl, size, std::nullopt, /*resize_storage=*/false);
  if (memory_format.has_value() && *memory_format != at::MemoryFormat::Preserve) {
    impl->empty_tensor_restride(*memory_format);
  }
  return self;
}

at::Tensor& set_storage(at::Tensor& self, at::Storage source, int64_t offset, c10::IntArrayRef size,
                        c10::IntArrayRef stride) {
  TORCH_CHECK(source.device().type() == kNpu, "set_: the storage is on ", source.device(), ", not on an npu");
  return at::native::set_storage_cpu_(self, std::move(source), offset, size, stride);
}

at::Tensor& set_whole_storage(at::Tensor& self, at::Storage source) {
  int64_t itemsize = self.dtype().itemsize();
  TORCH_CHECK(source.nbytes() % itemsize == 0, "set_: storage of ", source.nbytes(),
              " bytes is not a whole number of ", self.dtype(), " elements");
  int64_t numel = static_cast<int64_t>(source.nbytes()) / itemsize;
  return set_storage(self, std::move(source), 0, {numel}, {});
}

at::Tensor& set_tensor(at::Tensor& self, const at::Tensor& source) {
  if (self.unsafeGetTensorImpl() == source.unsafeGetTensorImpl()) return self;
  return set_storage(self, source.storage(), source.storage_offset(), source.sizes(), source.strides());
}

int64_t storage_format(const at::Tensor& t) {
  if (t.device().type() != kNpu || !t.has_storage()) return kFormatND;
  auto* block = block_of(t.storage());
  return block ? block->format : kFormatND;
}

void set_storage_format(const at::Tensor& t, int64_t format) {
  TORCH_CHECK(t.device().type() == kNpu, "set_storage_format: expected an npu tensor, got ", t.device());
  auto* block = block_of(t.storage());
  TORCH_CHECK(block != nullptr, "set_storage_format: this npu tensor's storage carries no device metadata");
  block->format = format;
}

at::Tensor clone(const at::Tensor& self, std::optional<at::MemoryFormat> memory_format) {
  auto out = at::empty_like(self, self.options(), memory_format);
  as_cpu(out).copy_(as_cpu(self));
  if (out.numel() > 0 || out.storage().nbytes() == 0) {
    auto* block = block_of(out.storage());
    if (block) block->format = storage_format(self);  // torch_npu clones keep the storage format
  }
  return out;
}

// ---------------------------------------------------------------- the fallback for every other aten op
struct NpuArg {
  at::Tensor npu;       // the caller's npu tensor
  at::Tensor host;      // its CPU view handed to the CPU kernel
};

void fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const auto& arguments = schema.arguments();
  const size_t num_args = arguments.size();
  const size_t first = stack->size() - num_args;
  std::optional<c10::DeviceIndex> device;
  // argument index -> its npu tensors (one for Tensor, several for Tensor[])
  std::vector<std::vector<NpuArg>> converted(num_args);
  // host storage -> npu storage, to give aliasing results back on the caller's storage
  std::unordered_map<const c10::StorageImpl*, c10::Storage> storage_of_host;

  auto convert = [&](const at::Tensor& t, size_t i) -> at::Tensor {
    if (!t.defined() || t.device().type() != kNpu) return t;
    if (!device) device = t.device().index();
    auto host = host_view(t);
    storage_of_host[host.storage().unsafeGetStorageImpl()] = t.storage();
    converted[i].push_back({t, host});
    return host;
  };

  for (size_t i = 0; i < num_args; ++i) {
    c10::IValue& iv = (*stack)[first + i];
    if (iv.isTensor()) {
      iv = convert(iv.toTensor(), i);
    } else if (iv.isTensorList()) {
      auto list = iv.toTensorList();
      for (size_t j = 0; j < list.size(); ++j) list[j] = convert(list[j], i);
      iv = list;
    } else if (iv.isList() && iv.toListRef().size() > 0 && arguments[i].real_type()->kind() == c10::TypeKind::ListType) {
      // Tensor?[] (index, index_put_)
      auto list = iv.toList();
      for (size_t j = 0; j < list.size(); ++j) {
        c10::IValue e = list.get(j);
        if (e.isTensor()) list.set(j, convert(e.toTensor(), i));
      }
      iv = list;
    } else if (iv.isDevice() && iv.toDevice().type() == kNpu) {
      if (!device) device = iv.toDevice().index();
      iv = c10::IValue(c10::Device(c10::kCPU));
    }
  }
  if (device && *device >= 0) check_index(*device);
  c10::DeviceIndex dev = (device && *device >= 0) ? *device : t_current_device;

  op.callBoxed(stack);

  // Mutated npu arguments: a CPU out= kernel may have resized (even re-allocated) the host view;
  // carry its layout, and its bytes when they moved, back to the npu tensor.
  for (size_t i = 0; i < num_args; ++i) {
    const auto* alias = arguments[i].alias_info();
    if (!alias || !alias->isWrite()) continue;
    for (auto& a : converted[i]) {
      auto* npu_impl = a.npu.unsafeGetTensorImpl();
      const c10::Storage& host_storage = a.host.storage();
      if (host_storage.data() != a.npu.storage().data() || host_storage.nbytes() != a.npu.storage().nbytes()) {
        c10::Storage fresh = wrap_cpu_storage(host_storage, dev);
        npu_impl->set_storage_keep_dtype(fresh);
      }
      if (a.host.sizes() != a.npu.sizes() || a.host.strides() != a.npu.strides() ||
          a.host.storage_offset() != a.npu.storage_offset()) {
        npu_impl->set_sizes_and_strides(a.host.sizes(), a.host.strides(), a.host.storage_offset());
      }
    }
  }

  auto to_device = [&](const at::Tensor& r) -> at::Tensor {
    if (!r.defined() || r.device().type() != c10::kCPU) return r;
    // a mutated argument given back (in-place and out= ops): the caller's own tensor
    for (auto& per_arg : converted)
      for (auto& a : per_arg)
        if (r.unsafeGetTensorImpl() == a.host.unsafeGetTensorImpl()) return a.npu;
    auto found = storage_of_host.find(r.storage().unsafeGetStorageImpl());
    if (found != storage_of_host.end()) return tensor_on_storage(found->second, r);  // a view
    return tensor_on_storage(wrap_cpu_storage(r.storage(), dev), r);                // fresh memory
  };

  const size_t num_returns = schema.returns().size();
  const size_t ret_first = stack->size() - num_returns;
  for (size_t i = 0; i < num_returns; ++i) {
    c10::IValue& iv = (*stack)[ret_first + i];
    if (iv.isTensor()) {
      iv = to_device(iv.toTensor());
    } else if (iv.isTensorList()) {
      auto list = iv.toTensorList();
      for (size_t j = 0; j < list.size(); ++j) list[j] = to_device(list[j]);
      iv = list;
    }
  }
}

}  // namespace npu_sim

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&npu_sim::fallback>());
}

TORCH_LIBRARY_IMPL(_, AutocastPrivateUse1, m) { m.fallback(torch::CppFunction::makeFallthrough()); }

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", npu_sim::empty_memory_format);
  m.impl("empty_strided", npu_sim::empty_strided);
  m.impl("_copy_from", npu_sim::copy_from);
  m.impl("_copy_from_and_resize", npu_sim::copy_from_and_resize);
  m.impl("resize_", npu_sim::resize_);
  m.impl("set_.source_Storage_storage_offset", npu_sim::set_storage);
  m.impl("set_.source_Storage", npu_sim::set_whole_storage);
  m.impl("set_.source_Tensor", npu_sim::set_tensor);
  m.impl("clone", npu_sim::clone);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  at::RegisterPrivateUse1HooksInterface(&npu_sim::g_hooks);
  m.def("host_view", &npu_sim::host_view, "CPU tensor over the same memory as an npu tensor");
  m.def("device_view", [](const at::Tensor& cpu, int index) {
    TORCH_CHECK(cpu.device().type() == c10::kCPU, "device_view expects a CPU tensor, got ", cpu.device());
    npu_sim::check_index(static_cast<c10::DeviceIndex>(index));
    return npu_sim::tensor_on_storage(npu_sim::wrap_cpu_storage(cpu.storage(), index), cpu);
  }, "npu tensor over the same memory as a CPU tensor (which it keeps alive)");
  m.def("storage_format", &npu_sim::storage_format, "ACL format code kept with an npu tensor's storage");
  m.def("set_storage_format", &npu_sim::set_storage_format, "set the ACL format code of an npu storage");
  m.def("set_device_count", [](int n) {
    TORCH_CHECK(n >= 1 && n <= npu_sim::kMaxDevices, "device count must be in [1, ", npu_sim::kMaxDevices, "], got ", n);
    npu_sim::g_device_count = n;
  });
  m.def("device_count", []() { return npu_sim::g_device_count.load(); });
  m.def("current_device", []() { return static_cast<int>(npu_sim::t_current_device); });
  m.def("set_device", [](int d) {
    npu_sim::check_index(static_cast<c10::DeviceIndex>(d));
    npu_sim::t_current_device = static_cast<c10::DeviceIndex>(d);
  });
  m.def("current_stream_id", [](int d) {
    npu_sim::check_index(static_cast<c10::DeviceIndex>(d));
    return static_cast<int64_t>(npu_sim::t_current_stream[d]);
  });
  m.def("set_current_stream_id", [](int d, int64_t id) {
    npu_sim::check_index(static_cast<c10::DeviceIndex>(d));
    npu_sim::t_current_stream[d] = static_cast<c10::StreamId>(id);
  });
  m.def("memory_allocated", [](int d) { npu_sim::check_index(d); return npu_sim::g_stats[d].allocated.load(); });
  m.def("max_memory_allocated", [](int d) { npu_sim::check_index(d); return npu_sim::g_stats[d].peak.load(); });
  m.def("reset_peak_memory_stats", [](int d) {
    npu_sim::check_index(d);
    npu_sim::g_stats[d].peak = npu_sim::g_stats[d].allocated.load();
  });
}
