//! The Vulkan executor: runs a graph's nodes as the GPU target's SPIR-V kernels through `ash`.
//!
//! One instance and device (the first with a compute queue; Mesa's lavapipe here), limits read
//! from the driver and passed to the planner, one compute pipeline per kernel [`Spec`] (cached,
//! through a `VkPipelineCache`), host-visible storage buffers per value, and one command buffer
//! per run with a compute-to-compute barrier between dependent dispatches. Every Vulkan call
//! that fails surfaces as [`GpuRunError::Vulkan`] naming the call; the loader is opened at run
//! time (`ash`'s `loaded` feature), so a machine without Vulkan gets [`GpuRunError::NoVulkan`],
//! not a link error.

use std::collections::HashMap;
use std::sync::Mutex;

use ash::vk;
use tessera_ir::{Bindings, Graph, Op, Tensor, Value};
use tessera_target_spirv::{build, plan, GpuError, Limits, Plan, Spec};

/// Why a graph could not run on the GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuRunError {
    #[error("no Vulkan: {0} (install libvulkan1 and a driver, e.g. Debian's mesa-vulkan-drivers for lavapipe)")]
    NoVulkan(String),
    #[error("Vulkan call {call} failed: {result}")]
    Vulkan { call: &'static str, result: vk::Result },
    #[error("node n{node}: {err}")]
    Declined { node: usize, err: GpuError },
    #[error("node n{node} on the host: {err}")]
    Host { node: usize, err: String },
    #[error("{0}")]
    Input(String),
}

fn vk_err(call: &'static str) -> impl Fn(vk::Result) -> GpuRunError {
    move |result| GpuRunError::Vulkan { call, result }
}

#[derive(Clone, Copy)]
struct Pipeline {
    pipeline: vk::Pipeline,
    layout: vk::PipelineLayout,
    set_layout: vk::DescriptorSetLayout,
    module: vk::ShaderModule,
    buffers: usize,
    local: [u32; 3],
    shared_bytes: u32,
}

/// A Vulkan device ready to run GPU-target kernels.
pub struct Vulkan {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    queue: Mutex<vk::Queue>,
    family: u32,
    memory: vk::PhysicalDeviceMemoryProperties,
    cache: vk::PipelineCache,
    pipelines: Mutex<HashMap<Spec, Pipeline>>,
    /// Nanoseconds per timestamp tick, where the compute queue writes timestamps.
    timestamp_ns: Option<f64>,
    /// A timeline semaphore every submission signals with the next value (Vulkan 1.2), and
    /// the last value given out (behind the lock the queue shares).
    timeline: Option<vk::Semaphore>,
    timeline_value: Mutex<u64>,
    /// The device's name as the driver reports it (`llvmpipe (LLVM ..)` for lavapipe).
    pub name: String,
    pub limits: Limits,
}

/// What one run did, per dispatched kernel.
#[derive(Clone, Debug)]
pub struct KernelReport {
    pub node: usize,
    pub op: &'static str,
    pub spec: Spec,
    pub local: [u32; 3],
    pub groups: [u32; 3],
    pub shared_bytes: u32,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Floating-point operations, as the planner counts them for the cost model.
    pub flops: u64,
    /// The kernel's time on the device, from timestamps around its dispatch (where the queue
    /// has them).
    pub device_us: Option<f64>,
}

struct Buffer {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    ptr: *mut u8,
    bytes: usize,
}

impl Vulkan {
    /// Opens the Vulkan loader and the first device with a compute queue.
    pub fn new() -> Result<Vulkan, GpuRunError> {
        // SAFETY: loading the system's Vulkan loader library; its entry points are used as the
        // Vulkan specification defines them.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| GpuRunError::NoVulkan(e.to_string()))?;
        // Vulkan 1.2 where the loader has it (timeline semaphores are core there), else 1.1.
        // SAFETY: a global query of the loaded library.
        let loader = unsafe { entry.try_enumerate_instance_version() }.ok().flatten().unwrap_or(vk::API_VERSION_1_0);
        let api = if loader >= vk::API_VERSION_1_2 { vk::API_VERSION_1_2 } else { vk::API_VERSION_1_1 };
        let app = vk::ApplicationInfo::default().application_name(c"tessera").api_version(api);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: valid create info; the instance is destroyed in Drop.
        let instance = unsafe { entry.create_instance(&info, None) }.map_err(vk_err("vkCreateInstance"))?;
        // SAFETY: instance is live.
        let pdevs = unsafe { instance.enumerate_physical_devices() }.map_err(vk_err("vkEnumeratePhysicalDevices"))?;
        let mut chosen = None;
        for pd in pdevs {
            // SAFETY: pd comes from this instance.
            let fams = unsafe { instance.get_physical_device_queue_family_properties(pd) };
            if let Some(f) = fams.iter().position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE)) {
                chosen = Some((pd, f as u32, fams[f].timestamp_valid_bits));
                break;
            }
        }
        let Some((pd, family, timestamp_bits)) = chosen else {
            // SAFETY: no child objects exist.
            unsafe { instance.destroy_instance(None) };
            return Err(GpuRunError::NoVulkan("no device with a compute queue".into()));
        };
        // SAFETY: pd comes from this instance.
        let props = unsafe { instance.get_physical_device_properties(pd) };
        // SAFETY: as above.
        let memory = unsafe { instance.get_physical_device_memory_properties(pd) };
        let name = props.device_name_as_c_str().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let l = props.limits;
        let timestamp_ns =
            (timestamp_bits > 0 && l.timestamp_compute_and_graphics == vk::TRUE).then_some(l.timestamp_period as f64);
        // Vulkan 1.1: subgroup properties through vkGetPhysicalDeviceProperties2.
        let mut sg = vk::PhysicalDeviceSubgroupProperties::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut sg);
        // SAFETY: pd comes from this instance, which asked for API 1.1.
        unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
        let subgroup_arithmetic = sg.supported_stages.contains(vk::ShaderStageFlags::COMPUTE)
            && sg.supported_operations.contains(vk::SubgroupFeatureFlags::ARITHMETIC);
        let limits = Limits {
            max_invocations: l.max_compute_work_group_invocations,
            max_shared_bytes: l.max_compute_shared_memory_size,
            max_groups: l.max_compute_work_group_count,
            max_push_bytes: l.max_push_constants_size,
            subgroup_arithmetic,
            fast_shared_memory: props.device_type != vk::PhysicalDeviceType::CPU,
        };
        let prio = [1.0f32];
        let qinfo = [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&prio)];
        // Timeline semaphores (Vulkan 1.2) order submissions and let other units wait on them.
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
        let has_timeline = api >= vk::API_VERSION_1_2 && props.api_version >= vk::API_VERSION_1_2 && {
            let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut f12);
            // SAFETY: pd comes from this instance, made for API 1.2.
            unsafe { instance.get_physical_device_features2(pd, &mut f2) };
            f12.timeline_semaphore == vk::TRUE
        };
        let mut enable12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let mut dinfo = vk::DeviceCreateInfo::default().queue_create_infos(&qinfo);
        if has_timeline {
            dinfo = dinfo.push_next(&mut enable12);
        }
        // SAFETY: valid create info for pd.
        let device = match unsafe { instance.create_device(pd, &dinfo, None) } {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: no child objects exist.
                unsafe { instance.destroy_instance(None) };
                return Err(vk_err("vkCreateDevice")(e));
            }
        };
        // SAFETY: family/0 was requested at device creation.
        let queue = unsafe { device.get_device_queue(family, 0) };
        // SAFETY: device is live.
        let cache = unsafe { device.create_pipeline_cache(&vk::PipelineCacheCreateInfo::default(), None) }
            .map_err(vk_err("vkCreatePipelineCache"))?;
        let timeline = if has_timeline {
            let mut ty =
                vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE).initial_value(0);
            let info = vk::SemaphoreCreateInfo::default().push_next(&mut ty);
            // SAFETY: the device was created with timelineSemaphore enabled.
            Some(unsafe { device.create_semaphore(&info, None) }.map_err(vk_err("vkCreateSemaphore"))?)
        } else {
            None
        };
        Ok(Vulkan {
            _entry: entry,
            instance,
            device,
            queue: Mutex::new(queue),
            family,
            memory,
            cache,
            pipelines: Mutex::new(HashMap::new()),
            timestamp_ns,
            timeline,
            timeline_value: Mutex::new(0),
            name,
            limits,
        })
    }

    fn pipeline(&self, spec: &Spec) -> Result<Pipeline, GpuRunError> {
        let mut cache = self.pipelines.lock().expect("pipeline cache lock");
        if let Some(p) = cache.get(spec) {
            return Ok(*p);
        }
        let k = build(spec);
        let d = &self.device;
        // SAFETY: the words are a SPIR-V module (checked by spirv-val in the tests).
        let module = unsafe { d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&k.words), None) }
            .map_err(vk_err("vkCreateShaderModule"))?;
        let bindings: Vec<_> = (0..k.buffers as u32)
            .map(|i| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(i)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        // SAFETY: valid create infos on a live device.
        let set_layout = unsafe {
            d.create_descriptor_set_layout(&vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings), None)
        }
        .map_err(vk_err("vkCreateDescriptorSetLayout"))?;
        let ranges = [vk::PushConstantRange {
            stage_flags: vk::ShaderStageFlags::COMPUTE,
            offset: 0,
            size: k.push_words.max(1) * 4,
        }];
        let set_layouts = [set_layout];
        // SAFETY: as above.
        let layout = unsafe {
            d.create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts).push_constant_ranges(&ranges),
                None,
            )
        }
        .map_err(vk_err("vkCreatePipelineLayout"))?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main");
        let info = [vk::ComputePipelineCreateInfo::default().stage(stage).layout(layout)];
        // SAFETY: as above.
        let pipeline = unsafe { d.create_compute_pipelines(self.cache, &info, None) }
            .map_err(|(_, e)| vk_err("vkCreateComputePipelines")(e))?[0];
        let p = Pipeline {
            pipeline,
            layout,
            set_layout,
            module,
            buffers: k.buffers,
            local: k.local,
            shared_bytes: k.shared_bytes,
        };
        cache.insert(spec.clone(), p);
        Ok(p)
    }

    fn buffer(&self, bytes: usize) -> Result<Buffer, GpuRunError> {
        let d = &self.device;
        // Whole u32 words: shaders read packed data a word at a time.
        let size = bytes.max(4).next_multiple_of(4) as u64;
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid create info on a live device.
        let buffer = unsafe { d.create_buffer(&info, None) }.map_err(vk_err("vkCreateBuffer"))?;
        // SAFETY: buffer is live.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let want = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let ty = (0..self.memory.memory_type_count)
            .find(|&i| {
                req.memory_type_bits & (1 << i) != 0
                    && self.memory.memory_types[i as usize].property_flags.contains(want)
            })
            .ok_or(GpuRunError::Vulkan {
                call: "choosing host-visible memory",
                result: vk::Result::ERROR_FEATURE_NOT_PRESENT,
            })?;
        let alloc = vk::MemoryAllocateInfo::default().allocation_size(req.size).memory_type_index(ty);
        // SAFETY: as above.
        let memory = unsafe { d.allocate_memory(&alloc, None) }.map_err(vk_err("vkAllocateMemory"))?;
        // SAFETY: memory fits the buffer's requirements.
        unsafe { d.bind_buffer_memory(buffer, memory, 0) }.map_err(vk_err("vkBindBufferMemory"))?;
        // SAFETY: host-visible memory, mapped once for its lifetime.
        let ptr = unsafe { d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) }
            .map_err(vk_err("vkMapMemory"))? as *mut u8;
        Ok(Buffer { buffer, memory, ptr, bytes })
    }

    fn free(&self, b: Buffer) {
        // SAFETY: the buffer's work has completed (runs wait on their fence).
        unsafe {
            self.device.unmap_memory(b.memory);
            self.device.destroy_buffer(b.buffer, None);
            self.device.free_memory(b.memory, None);
        }
    }

    /// Runs `g` on `inputs` (in the graph's input order). With [`Fallback::Fail`] every node
    /// must run on the GPU: the first node the target declines fails the run with the reason.
    /// With [`Fallback::Host`] declined nodes run on the host through the reference
    /// interpreter, their operands read back from the GPU and their results uploaded when a
    /// GPU kernel needs them. Constants are uploaded for this run only; [`GpuModel`] keeps
    /// them resident across runs.
    pub fn run(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        fallback: Fallback,
    ) -> Result<(Vec<Tensor>, RunReport), GpuRunError> {
        let consts = Mutex::new(HashMap::new());
        let r = self.execute(g, inputs, fallback, &consts);
        for (_, b) in consts.into_inner().expect("constant buffers lock").drain() {
            self.free(b);
        }
        r
    }

    /// The device's timeline semaphore and the value the latest submission signals, where the
    /// device has timeline semaphores: another unit (the CPU, the NPU) waits for a value to
    /// know the GPU work before it is done, without a fence per submission.
    pub fn timeline(&self) -> Option<(vk::Semaphore, u64)> {
        let v = *self.timeline_value.lock().expect("timeline lock");
        self.timeline.map(|s| (s, v))
    }

    /// Waits on the host until the timeline reaches `value`, at most `timeout_ns`; false on a
    /// timeout. Without timeline semaphores every run has already waited: true.
    pub fn wait_timeline(&self, value: u64, timeout_ns: u64) -> Result<bool, GpuRunError> {
        let Some(sem) = self.timeline else { return Ok(true) };
        let sems = [sem];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default().semaphores(&sems).values(&values);
        // SAFETY: a live timeline semaphore of this device.
        match unsafe { self.device.wait_semaphores(&info, timeout_ns) } {
            Ok(()) => Ok(true),
            Err(vk::Result::TIMEOUT) => Ok(false),
            Err(e) => Err(vk_err("vkWaitSemaphores")(e)),
        }
    }

    /// [`Vulkan::run`] as a conformance-suite runner: with [`Fallback::Fail`], a declined node
    /// makes the case unsupported (the suite then measures what runs wholly on the GPU).
    pub fn run_case(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        fallback: Fallback,
    ) -> Result<Vec<Tensor>, tessera_compiler::conformance::RunnerError> {
        use tessera_compiler::conformance::RunnerError;
        match self.run(g, inputs, fallback) {
            Ok((outs, _)) => Ok(outs),
            Err(e @ GpuRunError::Declined { .. }) => Err(RunnerError::Unsupported(format!("gpu: {e}"))),
            Err(e) => Err(RunnerError::Failed(format!("gpu: {e}"))),
        }
    }

    fn execute(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        fallback: Fallback,
        consts: &Mutex<HashMap<Value, Buffer>>,
    ) -> Result<(Vec<Tensor>, RunReport), GpuRunError> {
        if inputs.len() != g.inputs().len() {
            return Err(GpuRunError::Input(format!(
                "{} inputs given, the graph has {}",
                inputs.len(),
                g.inputs().len()
            )));
        }
        let mut bindings = Bindings::default();
        for ((name, v), t) in g.inputs().iter().zip(inputs) {
            let ty = g.ty(*v);
            if t.dtype() != ty.dtype {
                return Err(GpuRunError::Input(format!("input {name} is {}, the graph takes {}", t.dtype(), ty.dtype)));
            }
            ty.shape.bind(t.shape(), &mut bindings).map_err(|e| GpuRunError::Input(format!("input {name}: {e}")))?;
        }
        let d = &self.device;
        // At most one descriptor set of up to 8 buffers per node.
        let sets = nodes_within(g).max(1) as u32;
        let sizes = [vk::DescriptorPoolSize { ty: vk::DescriptorType::STORAGE_BUFFER, descriptor_count: sets * 8 }];
        // SAFETY: valid create infos on a live device; both pools are destroyed by Exec's drop,
        // after its last submission finished.
        let pool = unsafe {
            d.create_descriptor_pool(&vk::DescriptorPoolCreateInfo::default().max_sets(sets).pool_sizes(&sizes), None)
        }
        .map_err(vk_err("vkCreateDescriptorPool"))?;
        // SAFETY: as above.
        let cpool = match unsafe {
            d.create_command_pool(&vk::CommandPoolCreateInfo::default().queue_family_index(self.family), None)
        } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: nothing uses the pool yet.
                unsafe { d.destroy_descriptor_pool(pool, None) };
                return Err(vk_err("vkCreateCommandPool")(e));
            }
        };
        // Two timestamps per dispatch, where the queue writes them.
        let queries = match self.timestamp_ns {
            Some(_) => {
                let info = vk::QueryPoolCreateInfo::default()
                    .query_type(vk::QueryType::TIMESTAMP)
                    .query_count(2 * g.n_nodes().max(1) as u32);
                // SAFETY: valid create info on a live device; destroyed by Exec's drop.
                match unsafe { d.create_query_pool(&info, None) } {
                    Ok(q) => Some(q),
                    Err(e) => {
                        // SAFETY: nothing uses the pools yet.
                        unsafe {
                            d.destroy_command_pool(cpool, None);
                            d.destroy_descriptor_pool(pool, None);
                        }
                        return Err(vk_err("vkCreateQueryPool")(e));
                    }
                }
            }
            None => None,
        };
        let mut ex = Exec {
            vk: self,
            queries,
            queries_reset: false,
            timed: Vec::new(),
            borrowed: false,
            g,
            inputs,
            bindings,
            consts,
            owned: Vec::new(),
            of: HashMap::new(),
            host: HashMap::new(),
            shapes: HashMap::new(),
            pool,
            cpool,
            cb: None,
            report: RunReport::default(),
        };
        ex.run_nodes(fallback)?;
        let mut outs = Vec::new();
        for (_, v) in g.outputs() {
            outs.push(ex.host_value(*v)?.into_owned());
        }
        ex.flush()?;
        ex.read_timestamps()?;
        let report = std::mem::take(&mut ex.report);
        Ok((outs, report))
    }
}

/// Records a barrier making compute-shader writes visible to `dst` as `barrier` says.
///
/// # Safety
/// `cb` is a command buffer of `d` in the recording state.
unsafe fn after_compute(
    d: &ash::Device,
    cb: vk::CommandBuffer,
    dst: vk::PipelineStageFlags,
    barrier: &[vk::MemoryBarrier],
) {
    // SAFETY: the caller guarantees cb is recording on d.
    unsafe {
        d.cmd_pipeline_barrier(
            cb,
            vk::PipelineStageFlags::COMPUTE_SHADER,
            dst,
            vk::DependencyFlags::empty(),
            barrier,
            &[],
            &[],
        )
    };
}

/// Nodes of `g` and of its regions' bodies, recursively (one descriptor set each at most).
fn nodes_within(g: &Graph) -> usize {
    g.nodes().map(|(_, nd)| 1 + nd.body.as_deref().map_or(0, nodes_within)).sum()
}

/// What to do with a node the GPU target declines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Fail the run, naming the node and why.
    Fail,
    /// Run it on the host with the reference interpreter.
    Host,
}

/// A node the GPU target declined, run on the host instead.
#[derive(Clone, Debug)]
pub struct HostReport {
    pub node: usize,
    pub op: &'static str,
    pub why: String,
}

/// What one run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Each dispatched kernel, in order.
    pub kernels: Vec<KernelReport>,
    /// Nodes run on the host, in order.
    pub host: Vec<HostReport>,
    /// Nodes that reinterpret their operand's buffer (reshape, squeeze, ...).
    pub views: usize,
    /// Command buffers submitted (one per stretch of GPU kernels between host nodes).
    pub submissions: usize,
    /// Bytes copied into GPU buffers (inputs, constants, host results) and read back.
    pub uploaded: u64,
    pub downloaded: u64,
    /// The timeline value the run's last submission signalled (see [`Vulkan::timeline`]).
    pub timeline_value: Option<u64>,
}

/// A graph ready to run many times on a Vulkan device: its constants stay in GPU buffers
/// between runs (uploaded by the first run that needs each).
pub struct GpuModel {
    vk: std::sync::Arc<Vulkan>,
    graph: Graph,
    consts: Mutex<HashMap<Value, Buffer>>,
}

impl GpuModel {
    pub fn new(vk: std::sync::Arc<Vulkan>, graph: Graph) -> GpuModel {
        GpuModel { vk, graph, consts: Mutex::new(HashMap::new()) }
    }

    pub fn vulkan(&self) -> &Vulkan {
        &self.vk
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs the graph; see [`Vulkan::run`].
    pub fn run(&self, inputs: &[Tensor], fallback: Fallback) -> Result<(Vec<Tensor>, RunReport), GpuRunError> {
        self.vk.execute(&self.graph, inputs, fallback, &self.consts)
    }
}

impl Drop for GpuModel {
    fn drop(&mut self) {
        let mut consts = self.consts.lock().unwrap_or_else(|e| e.into_inner());
        for (_, b) in consts.drain() {
            self.vk.free(b);
        }
    }
}

/// A buffer's handle and mapping, wherever it is owned.
#[derive(Clone, Copy)]
struct BufRef {
    buffer: vk::Buffer,
    ptr: *mut u8,
    bytes: usize,
}

impl Buffer {
    fn r(&self) -> BufRef {
        BufRef { buffer: self.buffer, ptr: self.ptr, bytes: self.bytes }
    }
}

/// One run: the values that live in GPU buffers (the run's own, or resident constants), the
/// values that live on the host (host nodes' results), and the command buffer being recorded.
struct Exec<'a> {
    vk: &'a Vulkan,
    /// Timestamps: this run's `i`th dispatch writes queries `2i` and `2i + 1`.
    queries: Option<vk::QueryPool>,
    /// Whether the query pool was reset (in the first command buffer that writes to it).
    queries_reset: bool,
    /// For each of this run's dispatches, its index in `report.kernels` (a region's body
    /// reports its kernels untimed).
    timed: Vec<usize>,
    /// A region's run borrows its parent's pools and command buffer.
    borrowed: bool,
    g: &'a Graph,
    inputs: &'a [Tensor],
    bindings: Bindings,
    consts: &'a Mutex<HashMap<Value, Buffer>>,
    owned: Vec<Buffer>,
    of: HashMap<Value, BufRef>,
    host: HashMap<Value, Tensor>,
    shapes: HashMap<Value, Vec<usize>>,
    pool: vk::DescriptorPool,
    cpool: vk::CommandPool,
    cb: Option<vk::CommandBuffer>,
    report: RunReport,
}

impl Exec<'_> {
    /// The shape of `v`: known from a host result, or from its type and the bound symbols.
    fn shape(&self, v: Value) -> Option<Vec<usize>> {
        if let Some(s) = self.shapes.get(&v) {
            return Some(s.clone());
        }
        self.g.ty(v).shape.dims().iter().map(|d| self.bindings.resolve(d)).collect()
    }

    fn known_shape(&self, v: Value) -> Result<Vec<usize>, GpuRunError> {
        self.shape(v).ok_or_else(|| GpuRunError::Input(format!("the shape of {v} is not known")))
    }

    /// The buffer of `v`, uploaded from the inputs, a constant or a host result on first use,
    /// or made empty for a kernel's result.
    fn gpu(&mut self, v: Value) -> Result<BufRef, GpuRunError> {
        if let Some(&b) = self.of.get(&v) {
            return Ok(b);
        }
        if self.g.const_data(v).is_some() {
            let mut consts = self.consts.lock().expect("constant buffers lock");
            if let Some(b) = consts.get(&v) {
                let r = b.r();
                self.of.insert(v, r);
                return Ok(r);
            }
            let data = self.g.const_data(v).and_then(|c| c.bytes()).ok_or_else(|| {
                GpuRunError::Input(format!("constant {v} holds only a summary of its data, not its bytes"))
            })?;
            let b = self.vk.buffer(data.len())?;
            // SAFETY: the mapping holds data.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), b.ptr, data.len()) };
            self.report.uploaded += data.len() as u64;
            let r = b.r();
            consts.insert(v, b);
            self.of.insert(v, r);
            return Ok(r);
        }
        let input = self.g.inputs().iter().position(|(_, x)| *x == v);
        let data = match input {
            Some(i) => Some(self.inputs[i].to_bytes()),
            None => self.host.get(&v).map(|t| t.to_bytes()),
        };
        let bytes = match &data {
            Some(d) => d.len(),
            None => self.g.ty(v).dtype.storage_bytes(self.known_shape(v)?.iter().product()),
        };
        let b = self.vk.buffer(bytes)?;
        if let Some(d) = data {
            // SAFETY: the mapping holds d.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), b.ptr, d.len()) };
            self.report.uploaded += d.len() as u64;
        }
        let r = b.r();
        self.owned.push(b);
        self.of.insert(v, r);
        Ok(r)
    }

    /// The value of `v` on the host, read back from the GPU (after the pending work) if a
    /// kernel made it.
    fn host_value(&mut self, v: Value) -> Result<std::borrow::Cow<'_, Tensor>, GpuRunError> {
        use std::borrow::Cow;
        if !self.host.contains_key(&v) {
            if let Some(i) = self.g.inputs().iter().position(|(_, x)| *x == v) {
                return Ok(Cow::Borrowed(&self.inputs[i]));
            }
            let t = if self.g.const_data(v).is_some() {
                tessera_ir::const_value(self.g, v, false).map_err(|e| GpuRunError::Input(e.to_string()))?
            } else {
                let b = *self.of.get(&v).ok_or_else(|| GpuRunError::Input(format!("{v} was never computed")))?;
                self.flush()?;
                let shape = self.known_shape(v)?;
                let dtype = self.g.ty(v).dtype;
                let n = dtype.storage_bytes(shape.iter().product()).min(b.bytes);
                // SAFETY: the mapping holds b.bytes bytes, written by finished work.
                let bytes = unsafe { std::slice::from_raw_parts(b.ptr, n) };
                self.report.downloaded += n as u64;
                Tensor::from_bytes(dtype, &shape, bytes).map_err(|e| GpuRunError::Input(format!("{v}: {e}")))?
            };
            self.host.insert(v, t);
        }
        Ok(Cow::Borrowed(&self.host[&v]))
    }

    fn view(&mut self, n: tessera_ir::Node) -> Result<(), GpuRunError> {
        let nd = self.g.node(n);
        let (src, out) = (nd.inputs[0], nd.outputs[0]);
        self.report.views += 1;
        if let Some(t) = self.host.get(&src) {
            let shape = self.known_shape(out)?;
            let t =
                Tensor::from_bytes(t.dtype(), &shape, &t.to_bytes()).map_err(|e| GpuRunError::Input(e.to_string()))?;
            self.host.insert(out, t);
        } else {
            let b = self.gpu(src)?;
            self.of.insert(out, b);
        }
        Ok(())
    }

    /// Plans and runs (or records) every node of the graph in order.
    fn run_nodes(&mut self, fallback: Fallback) -> Result<(), GpuRunError> {
        let g = self.g;
        for (n, nd) in g.nodes() {
            let ins: Option<Vec<Vec<usize>>> = nd.inputs.iter().map(|&v| self.shape(v)).collect();
            let out = nd.outputs.first().and_then(|&o| self.shape(o));
            let p = match (ins, out) {
                (Some(ins), Some(out)) => {
                    let refs: Vec<&[usize]> = ins.iter().map(|s| s.as_slice()).collect();
                    plan(g, n, &refs, &out, &self.vk.limits)
                }
                _ => Err(GpuError::declined(nd.op.name(), "its shapes follow from values computed at run time")),
            };
            match p {
                Ok(Plan::View) => self.view(n)?,
                Ok(Plan::Dispatch { spec, operands, push, groups, bytes_read, bytes_written, flops }) => {
                    if let Op::Gather { axis } = nd.op {
                        // The shader cannot fail: out-of-range indices go to the host, whose
                        // interpreter reports them.
                        if let Err(why) = self.check_indices(nd.inputs[0], nd.inputs[1], axis) {
                            match fallback {
                                Fallback::Fail => {
                                    return Err(GpuRunError::Declined {
                                        node: n.index(),
                                        err: GpuError::declined("gather", why),
                                    })
                                }
                                Fallback::Host => {
                                    self.on_host(n, GpuError::declined("gather", why))?;
                                    continue;
                                }
                            }
                        }
                    }
                    let pipe = self.dispatch(n, &spec, &operands, &push, groups)?;
                    self.timed.push(self.report.kernels.len());
                    self.report.kernels.push(KernelReport {
                        node: n.index(),
                        op: nd.op.name(),
                        spec,
                        local: pipe.local,
                        groups,
                        shared_bytes: pipe.shared_bytes,
                        bytes_read,
                        bytes_written,
                        flops,
                        device_us: None,
                    });
                }
                // A fused region the target has no single shader for runs its body, node by
                // node, on the GPU.
                Err(_) if nd.body.is_some() => self.on_region(n, fallback)?,
                Err(err) => match fallback {
                    Fallback::Fail => return Err(GpuRunError::Declined { node: n.index(), err }),
                    Fallback::Host => self.on_host(n, err)?,
                },
            }
        }
        Ok(())
    }

    /// Runs a kernel region the target has no single shader for: its body's nodes, planned
    /// one by one, recorded into this run's command buffer. The body's operands are this run's
    /// buffers (or host values), its results become this run's; its kernels are reported
    /// under the region's node (without timestamps).
    fn on_region(&mut self, n: tessera_ir::Node, fallback: Fallback) -> Result<(), GpuRunError> {
        let nd = self.g.node(n);
        let body = nd.body.as_deref().expect("checked by the caller");
        let consts = Mutex::new(HashMap::new());
        let mut child = Exec {
            vk: self.vk,
            queries: None,
            queries_reset: true,
            timed: Vec::new(),
            g: body,
            inputs: &[],
            bindings: Bindings::default(),
            consts: &consts,
            owned: Vec::new(),
            of: HashMap::new(),
            host: HashMap::new(),
            shapes: HashMap::new(),
            pool: self.pool,
            cpool: self.cpool,
            borrowed: true,
            cb: self.cb.take(),
            report: RunReport { submissions: self.report.submissions, ..Default::default() },
        };
        let r = (|| {
            for (&v, (name, bv)) in nd.inputs.iter().zip(body.inputs()) {
                let shape = self.known_shape(v)?;
                body.ty(*bv)
                    .shape
                    .bind(&shape, &mut child.bindings)
                    .map_err(|e| GpuRunError::Input(format!("region operand {name}: {e}")))?;
                child.shapes.insert(*bv, shape);
                match self.host.get(&v) {
                    Some(t) => {
                        child.host.insert(*bv, t.clone());
                    }
                    None => {
                        let b = self.gpu(v)?;
                        child.of.insert(*bv, b);
                    }
                }
            }
            child.run_nodes(fallback)
        })();
        // The command buffer, the buffers and the report come back whatever happened.
        self.cb = child.cb.take();
        self.owned.append(&mut child.owned);
        let rep = std::mem::take(&mut child.report);
        // Each result: on the host, or in a buffer; and its shape.
        type Result_ = (Option<Tensor>, Option<BufRef>, Option<Vec<usize>>);
        let results: Vec<Result_> = body
            .outputs()
            .iter()
            .map(|(_, bo)| (child.host.remove(bo), child.of.get(bo).copied(), child.shape(*bo)))
            .collect();
        drop(child);
        for (_, b) in consts.into_inner().expect("constant buffers lock").drain() {
            self.vk.free(b);
        }
        r.map_err(|e| match e {
            GpuRunError::Declined { err, .. } => GpuRunError::Declined { node: n.index(), err },
            e => e,
        })?;
        for (&v, (t, b, shape)) in nd.outputs.iter().zip(results) {
            if let Some(shape) = shape {
                self.shapes.insert(v, shape);
            }
            match (t, b) {
                (Some(t), _) => {
                    self.host.insert(v, t);
                }
                (None, Some(b)) => {
                    self.of.insert(v, b);
                }
                (None, None) => return Err(GpuRunError::Input(format!("region result {v} was never computed"))),
            }
        }
        let r = &mut self.report;
        r.kernels.extend(rep.kernels.into_iter().map(|k| KernelReport { node: n.index(), ..k }));
        r.host.extend(rep.host.into_iter().map(|h| HostReport { node: n.index(), ..h }));
        r.views += rep.views;
        r.submissions = rep.submissions;
        r.uploaded += rep.uploaded;
        r.downloaded += rep.downloaded;
        r.timeline_value = r.timeline_value.max(rep.timeline_value);
        Ok(())
    }

    fn on_host(&mut self, n: tessera_ir::Node, err: GpuError) -> Result<(), GpuRunError> {
        let nd = self.g.node(n);
        let mut args = Vec::with_capacity(nd.inputs.len());
        for &v in &nd.inputs {
            args.push(self.host_value(v)?.into_owned());
        }
        let refs: Vec<&Tensor> = args.iter().collect();
        let outs = tessera_ir::run_node(self.g, n, &refs, &mut self.bindings)
            .map_err(|e| GpuRunError::Host { node: n.index(), err: e.to_string() })?;
        for (&v, t) in nd.outputs.iter().zip(outs) {
            self.shapes.insert(v, t.shape().to_vec());
            self.host.insert(v, t);
        }
        let why = match err {
            GpuError::Declined { why, .. } => why,
        };
        self.report.host.push(HostReport { node: n.index(), op: nd.op.name(), why });
        Ok(())
    }

    /// The command buffer being recorded, begun if none is.
    fn recording(&mut self) -> Result<vk::CommandBuffer, GpuRunError> {
        if let Some(cb) = self.cb {
            return Ok(cb);
        }
        let d = &self.vk.device;
        let info = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.cpool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: valid allocate info from a live pool.
        let cb = unsafe { d.allocate_command_buffers(&info) }.map_err(vk_err("vkAllocateCommandBuffers"))?[0];
        let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: cb is a fresh primary command buffer.
        unsafe { d.begin_command_buffer(cb, &begin) }.map_err(vk_err("vkBeginCommandBuffer"))?;
        self.cb = Some(cb);
        Ok(cb)
    }

    /// Whether every index of a gather is within the gathered dim (negative ones from its end).
    fn check_indices(&mut self, data: Value, indices: Value, axis: i64) -> Result<(), String> {
        let shape = self.known_shape(data).map_err(|e| e.to_string())?;
        let ax = if axis < 0 { axis + shape.len() as i64 } else { axis } as usize;
        let dim = shape[ax] as i64;
        let t = self.host_value(indices).map_err(|e| e.to_string())?;
        let bad = t.as_int().and_then(|a| a.iter().copied().find(|&i| i < -dim || i >= dim));
        match bad {
            Some(i) => Err(format!("index {i} is out of range for a dim of {dim}")),
            None => Ok(()),
        }
    }

    fn dispatch(
        &mut self,
        n: tessera_ir::Node,
        spec: &Spec,
        operands: &[Value],
        push: &[u32],
        groups: [u32; 3],
    ) -> Result<Pipeline, GpuRunError> {
        let nd = self.g.node(n);
        let pipe = self.vk.pipeline(spec)?;
        let mut ids = Vec::with_capacity(pipe.buffers);
        for &v in operands.iter().chain(&nd.outputs) {
            ids.push(self.gpu(v)?);
        }
        let cb = self.recording()?;
        let d = &self.vk.device;
        let layouts = [pipe.set_layout];
        let ainfo = vk::DescriptorSetAllocateInfo::default().descriptor_pool(self.pool).set_layouts(&layouts);
        // SAFETY: the pool holds one set of up to 8 buffers per node.
        let set = unsafe { d.allocate_descriptor_sets(&ainfo) }.map_err(vk_err("vkAllocateDescriptorSets"))?[0];
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = ids
            .iter()
            .map(|b| [vk::DescriptorBufferInfo { buffer: b.buffer, offset: 0, range: vk::WHOLE_SIZE }])
            .collect();
        let writes: Vec<_> = infos
            .iter()
            .enumerate()
            .map(|(i, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(i as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        let push_bytes: Vec<u8> = push.iter().flat_map(|w| w.to_le_bytes()).collect();
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE)];
        // SAFETY: every handle is live; the set's buffers outlive the submission.
        unsafe {
            d.update_descriptor_sets(&writes, &[]);
            d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, pipe.pipeline);
            d.cmd_bind_descriptor_sets(cb, vk::PipelineBindPoint::COMPUTE, pipe.layout, 0, &[set], &[]);
            if !push_bytes.is_empty() {
                d.cmd_push_constants(cb, pipe.layout, vk::ShaderStageFlags::COMPUTE, 0, &push_bytes);
            }
            let first = 2 * self.timed.len() as u32;
            if let (Some(q), false) = (self.queries, self.queries_reset) {
                // Every query is reset once, before the run's first timestamp.
                d.cmd_reset_query_pool(cb, q, 0, 2 * self.g.n_nodes().max(1) as u32);
                self.queries_reset = true;
            }
            if let Some(q) = self.queries {
                d.cmd_write_timestamp(cb, vk::PipelineStageFlags::COMPUTE_SHADER, q, first);
            }
            d.cmd_dispatch(cb, groups[0], groups[1], groups[2]);
            if let Some(q) = self.queries {
                d.cmd_write_timestamp(cb, vk::PipelineStageFlags::COMPUTE_SHADER, q, first + 1);
            }
            after_compute(d, cb, vk::PipelineStageFlags::COMPUTE_SHADER, &barrier);
        }
        Ok(pipe)
    }

    /// Each kernel's device time, from its two timestamps (after the last submission).
    fn read_timestamps(&mut self) -> Result<(), GpuRunError> {
        let (Some(q), Some(ns)) = (self.queries, self.vk.timestamp_ns) else { return Ok(()) };
        let n = self.timed.len();
        if n == 0 {
            return Ok(());
        }
        let mut ticks = vec![0u64; 2 * n];
        // SAFETY: every query 0..2n was written by a finished submission.
        unsafe {
            self.vk.device.get_query_pool_results(
                q,
                0,
                &mut ticks,
                vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
            )
        }
        .map_err(vk_err("vkGetQueryPoolResults"))?;
        for (&k, t) in self.timed.iter().zip(ticks.chunks(2)) {
            self.report.kernels[k].device_us = Some(t[1].saturating_sub(t[0]) as f64 * ns / 1e3);
        }
        Ok(())
    }

    /// Submits the recorded kernels, if any, and waits for them.
    fn flush(&mut self) -> Result<(), GpuRunError> {
        let Some(cb) = self.cb.take() else { return Ok(()) };
        let d = &self.vk.device;
        let host = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)];
        // SAFETY: cb is recording.
        unsafe {
            after_compute(d, cb, vk::PipelineStageFlags::HOST, &host);
            d.end_command_buffer(cb).map_err(vk_err("vkEndCommandBuffer"))?;
        }
        let cbs = [cb];
        let r = match self.vk.timeline {
            Some(sem) => {
                let q = self.vk.queue.lock().expect("queue lock");
                let mut last = self.vk.timeline_value.lock().expect("timeline lock");
                let value = *last + 1;
                let (sems, values) = ([sem], [value]);
                let mut tl = vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&values);
                let submit =
                    [vk::SubmitInfo::default().command_buffers(&cbs).signal_semaphores(&sems).push_next(&mut tl)];
                // SAFETY: the queue is externally synchronized by the lock; cb is executable.
                let r = unsafe { d.queue_submit(*q, &submit, vk::Fence::null()) }.map_err(vk_err("vkQueueSubmit"));
                if r.is_ok() {
                    *last = value;
                    self.report.timeline_value = Some(value);
                }
                drop(last);
                drop(q);
                r.and_then(|_| {
                    let info = vk::SemaphoreWaitInfo::default().semaphores(&sems).values(&values);
                    // SAFETY: a live timeline semaphore; the value is signalled by this submission.
                    unsafe { d.wait_semaphores(&info, u64::MAX) }.map_err(vk_err("vkWaitSemaphores"))
                })
            }
            None => {
                // SAFETY: live device.
                let fence = unsafe { d.create_fence(&vk::FenceCreateInfo::default(), None) }
                    .map_err(vk_err("vkCreateFence"))?;
                let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
                let q = self.vk.queue.lock().expect("queue lock");
                // SAFETY: the queue is externally synchronized by the lock; cb is executable.
                let r = unsafe { d.queue_submit(*q, &submit, fence) }.map_err(vk_err("vkQueueSubmit")).and_then(|_| {
                    // SAFETY: the fence belongs to this submission.
                    unsafe { d.wait_for_fences(&[fence], true, u64::MAX) }.map_err(vk_err("vkWaitForFences"))
                });
                drop(q);
                // SAFETY: the fence is signalled or was never submitted.
                unsafe { d.destroy_fence(fence, None) };
                r
            }
        };
        // SAFETY: the submission finished (or never started); cb is no longer in use.
        unsafe { d.free_command_buffers(self.cpool, &cbs) };
        self.report.submissions += 1;
        r
    }
}

impl Drop for Exec<'_> {
    fn drop(&mut self) {
        let d = &self.vk.device;
        // A run that failed midway may hold a recorded, never submitted command buffer: it is
        // freed with its pool. Submitted work was waited for.
        if self.borrowed {
            // A region's run: its parent owns the pools and took back the buffers.
            for b in self.owned.drain(..) {
                self.vk.free(b);
            }
            return;
        }
        // SAFETY: no submitted work is pending (flush waits), so the pools and buffers are idle.
        unsafe {
            d.destroy_command_pool(self.cpool, None);
            d.destroy_descriptor_pool(self.pool, None);
            if let Some(q) = self.queries {
                d.destroy_query_pool(q, None);
            }
        }
        for b in self.owned.drain(..) {
            self.vk.free(b);
        }
    }
}

impl Drop for Vulkan {
    fn drop(&mut self) {
        // SAFETY: no work is in flight (every run waits for its fence); children go first.
        unsafe {
            let _ = self.device.device_wait_idle();
            for (_, p) in self.pipelines.lock().expect("lock").drain() {
                self.device.destroy_pipeline(p.pipeline, None);
                self.device.destroy_pipeline_layout(p.layout, None);
                self.device.destroy_descriptor_set_layout(p.set_layout, None);
                self.device.destroy_shader_module(p.module, None);
            }
            self.device.destroy_pipeline_cache(self.cache, None);
            if let Some(t) = self.timeline {
                self.device.destroy_semaphore(t, None);
            }
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

// SAFETY: a buffer's mapping is host memory of this process, valid on any thread; access to a
// resident buffer goes through GpuModel's mutex, and a run's own buffers stay on its thread.
unsafe impl Send for Buffer {}

// SAFETY: Vulkan handles may be used from any thread; the queue and the pipeline map are
// behind mutexes, and each run owns its pools, buffers and fence.
unsafe impl Send for Vulkan {}
// SAFETY: as above.
unsafe impl Sync for Vulkan {}
