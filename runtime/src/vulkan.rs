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
use tessera_ir::{Bindings, DType, Graph, Tensor, Value};
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
        let app = vk::ApplicationInfo::default().application_name(c"tessera").api_version(vk::API_VERSION_1_1);
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
                chosen = Some((pd, f as u32));
                break;
            }
        }
        let Some((pd, family)) = chosen else {
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
        let limits = Limits {
            max_invocations: l.max_compute_work_group_invocations,
            max_shared_bytes: l.max_compute_shared_memory_size,
            max_groups: l.max_compute_work_group_count,
            max_push_bytes: l.max_push_constants_size,
        };
        let prio = [1.0f32];
        let qinfo = [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&prio)];
        let dinfo = vk::DeviceCreateInfo::default().queue_create_infos(&qinfo);
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
        Ok(Vulkan {
            _entry: entry,
            instance,
            device,
            queue: Mutex::new(queue),
            family,
            memory,
            cache,
            pipelines: Mutex::new(HashMap::new()),
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
        let size = bytes.max(4) as u64;
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

    /// Runs `g` on `inputs` (in the graph's input order), every node on the GPU: a node the
    /// target declines makes the whole run fail with the reason (placing it on another unit is
    /// the partitioner's work). Returns the outputs and a report per dispatched kernel.
    pub fn run(&self, g: &Graph, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<KernelReport>), GpuRunError> {
        if inputs.len() != g.inputs().len() {
            return Err(GpuRunError::Input(format!(
                "{} inputs given, the graph has {}",
                inputs.len(),
                g.inputs().len()
            )));
        }
        let mut bindings = Bindings::default();
        for ((name, v), t) in g.inputs().iter().zip(inputs) {
            g.ty(*v)
                .shape
                .bind(t.shape(), &mut bindings)
                .map_err(|e| GpuRunError::Input(format!("input {name}: {e}")))?;
        }
        let mut bufs = Buffers { vk: self, g, inputs, bindings, bufs: Vec::new(), of: HashMap::new() };
        // Plan every node first: a declined node fails the run before any GPU work.
        let mut plans = Vec::new();
        for (n, nd) in g.nodes() {
            let ins: Vec<Vec<usize>> = nd.inputs.iter().map(|&v| bufs.shape(v)).collect::<Result<_, _>>()?;
            let out = match nd.outputs.first() {
                Some(&o) => bufs.shape(o)?,
                None => Vec::new(),
            };
            let refs: Vec<&[usize]> = ins.iter().map(|s| s.as_slice()).collect();
            let p =
                plan(g, n, &refs, &out, &self.limits).map_err(|err| GpuRunError::Declined { node: n.index(), err })?;
            plans.push((n, p));
        }
        let d = &self.device;
        let dispatches = plans.iter().filter(|p| matches!(p.1, Plan::Dispatch { .. })).count().max(1) as u32;
        let sizes =
            [vk::DescriptorPoolSize { ty: vk::DescriptorType::STORAGE_BUFFER, descriptor_count: dispatches * 8 }];
        // SAFETY: valid create infos on a live device; everything made here is destroyed below.
        let pool = unsafe {
            d.create_descriptor_pool(
                &vk::DescriptorPoolCreateInfo::default().max_sets(dispatches).pool_sizes(&sizes),
                None,
            )
        }
        .map_err(vk_err("vkCreateDescriptorPool"))?;
        // SAFETY: as above.
        let cpool = unsafe {
            d.create_command_pool(&vk::CommandPoolCreateInfo::default().queue_family_index(self.family), None)
        };
        let r = cpool.map_err(vk_err("vkCreateCommandPool")).and_then(|cp| {
            let r = self.record(&plans, &mut bufs, pool, cp);
            // SAFETY: the run waited for its fence (or never submitted).
            unsafe { d.destroy_command_pool(cp, None) };
            r
        });
        // SAFETY: as above.
        unsafe { d.destroy_descriptor_pool(pool, None) };
        let reports = r?;
        let mut outs = Vec::new();
        for (name, v) in g.outputs() {
            let shape = bufs.shape(*v)?;
            let bytes = bufs.read(*v)?;
            let t = Tensor::from_bytes(DType::F32, &shape, bytes)
                .map_err(|e| GpuRunError::Input(format!("output {name}: {e}")))?;
            outs.push(t);
        }
        Ok((outs, reports))
    }

    fn record(
        &self,
        plans: &[(tessera_ir::Node, Plan)],
        bufs: &mut Buffers,
        pool: vk::DescriptorPool,
        cpool: vk::CommandPool,
    ) -> Result<Vec<KernelReport>, GpuRunError> {
        let g = bufs.g;
        let d = &self.device;
        let cbinfo = vk::CommandBufferAllocateInfo::default()
            .command_pool(cpool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: valid allocate info from a live pool.
        let cb = unsafe { d.allocate_command_buffers(&cbinfo) }.map_err(vk_err("vkAllocateCommandBuffers"))?[0];
        let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: cb is a fresh primary command buffer.
        unsafe { d.begin_command_buffer(cb, &begin) }.map_err(vk_err("vkBeginCommandBuffer"))?;
        let mut reports = Vec::new();
        for (n, p) in plans {
            let nd = g.node(*n);
            match p {
                Plan::View => {
                    let src = bufs.get(nd.inputs[0])?;
                    bufs.of.insert(nd.outputs[0], src);
                }
                Plan::Dispatch { spec, push, groups, bytes_read, bytes_written } => {
                    let pipe = self.pipeline(spec)?;
                    let (pipeline, layout, set_layout, nbuf) =
                        (pipe.pipeline, pipe.layout, pipe.set_layout, pipe.buffers);
                    let data_inputs = nbuf - 1;
                    let mut ids = Vec::with_capacity(nbuf);
                    for &v in &nd.inputs[..data_inputs] {
                        ids.push(bufs.get(v)?);
                    }
                    ids.push(bufs.get(nd.outputs[0])?);
                    let layouts = [set_layout];
                    let ainfo = vk::DescriptorSetAllocateInfo::default().descriptor_pool(pool).set_layouts(&layouts);
                    // SAFETY: the pool was sized for one set of up to 8 buffers per dispatch.
                    let set =
                        unsafe { d.allocate_descriptor_sets(&ainfo) }.map_err(vk_err("vkAllocateDescriptorSets"))?[0];
                    let infos: Vec<[vk::DescriptorBufferInfo; 1]> = ids
                        .iter()
                        .map(|&i| {
                            [vk::DescriptorBufferInfo { buffer: bufs.bufs[i].buffer, offset: 0, range: vk::WHOLE_SIZE }]
                        })
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
                        d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, pipeline);
                        d.cmd_bind_descriptor_sets(cb, vk::PipelineBindPoint::COMPUTE, layout, 0, &[set], &[]);
                        if !push_bytes.is_empty() {
                            d.cmd_push_constants(cb, layout, vk::ShaderStageFlags::COMPUTE, 0, &push_bytes);
                        }
                        d.cmd_dispatch(cb, groups[0], groups[1], groups[2]);
                        d.cmd_pipeline_barrier(
                            cb,
                            vk::PipelineStageFlags::COMPUTE_SHADER,
                            vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::HOST,
                            vk::DependencyFlags::empty(),
                            &barrier,
                            &[],
                            &[],
                        );
                    }
                    reports.push(KernelReport {
                        node: n.index(),
                        op: nd.op.name(),
                        spec: spec.clone(),
                        local: pipe.local,
                        groups: *groups,
                        shared_bytes: pipe.shared_bytes,
                        bytes_read: *bytes_read,
                        bytes_written: *bytes_written,
                    });
                }
            }
        }
        let host = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)];
        // SAFETY: cb is recording.
        unsafe {
            d.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &host,
                &[],
                &[],
            );
            d.end_command_buffer(cb).map_err(vk_err("vkEndCommandBuffer"))?;
        }
        // SAFETY: live device.
        let fence =
            unsafe { d.create_fence(&vk::FenceCreateInfo::default(), None) }.map_err(vk_err("vkCreateFence"))?;
        let cbs = [cb];
        let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
        let q = self.queue.lock().expect("queue lock");
        // SAFETY: the queue is externally synchronized by the lock; cb is executable.
        let r = unsafe { d.queue_submit(*q, &submit, fence) }
            .map_err(vk_err("vkQueueSubmit"))
            .and_then(|_| unsafe { d.wait_for_fences(&[fence], true, u64::MAX) }.map_err(vk_err("vkWaitForFences")));
        drop(q);
        // SAFETY: the fence is signalled or was never submitted.
        unsafe { d.destroy_fence(fence, None) };
        r?;
        Ok(reports)
    }
}

/// The buffers of one run: one per value a dispatch reads or writes (views share their
/// source's), filled from the inputs and constants when first needed, freed on drop.
struct Buffers<'a> {
    vk: &'a Vulkan,
    g: &'a Graph,
    inputs: &'a [Tensor],
    bindings: Bindings,
    bufs: Vec<Buffer>,
    of: HashMap<Value, usize>,
}

impl Buffers<'_> {
    fn shape(&self, v: Value) -> Result<Vec<usize>, GpuRunError> {
        self.g
            .ty(v)
            .shape
            .dims()
            .iter()
            .map(|d| self.bindings.resolve(d))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| GpuRunError::Input(format!("the shape of {v} is not known from the inputs' shapes")))
    }

    /// The buffer of `v`, made (and filled, for an input or a constant) on first use.
    fn get(&mut self, v: Value) -> Result<usize, GpuRunError> {
        if let Some(&i) = self.of.get(&v) {
            return Ok(i);
        }
        let numel: usize = self.shape(v)?.iter().product();
        let b = self.vk.buffer(numel * 4)?;
        let input = self.g.inputs().iter().position(|(_, x)| *x == v);
        let data: Option<Vec<u8>> = match input {
            Some(i) if self.inputs[i].dtype() != DType::F32 => {
                self.vk.free(b);
                return Err(GpuRunError::Input(format!(
                    "input {} is {}, the GPU target reads f32",
                    self.g.inputs()[i].0,
                    self.inputs[i].dtype()
                )));
            }
            Some(i) => Some(self.inputs[i].to_bytes()),
            None => self.g.const_data(v).and_then(|c| c.bytes()).map(|b| b.to_vec()),
        };
        if let Some(d) = data {
            let n = d.len().min(numel * 4);
            // SAFETY: the mapping holds at least numel * 4 bytes.
            unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), b.ptr, n) };
        }
        self.bufs.push(b);
        self.of.insert(v, self.bufs.len() - 1);
        Ok(self.bufs.len() - 1)
    }

    /// The bytes of `v` after the run.
    fn read(&mut self, v: Value) -> Result<&[u8], GpuRunError> {
        let i = self.get(v)?;
        let b = &self.bufs[i];
        // SAFETY: the mapping holds b.bytes bytes, written by the finished run.
        Ok(unsafe { std::slice::from_raw_parts(b.ptr, b.bytes) })
    }
}

impl Drop for Buffers<'_> {
    fn drop(&mut self) {
        for b in self.bufs.drain(..) {
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
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

// SAFETY: Vulkan handles may be used from any thread; the queue and the pipeline map are
// behind mutexes, and each run owns its pools, buffers and fence.
unsafe impl Send for Vulkan {}
// SAFETY: as above.
unsafe impl Sync for Vulkan {}
