//! Graphs whose shapes depend on input *values* (`?` dims: a Reshape whose target shape is an
//! input, a Slice with run-time starts, a Range, a ConstantOfShape, an Unsqueeze with run-time
//! axes): the CPU target needs every dim to follow from the input shapes, so such a graph is
//! compiled at its first run, once per distinct value of its shape-like inputs (scalars, and
//! integer vectors of at most [`MAX_KEY_ELEMENTS`] elements). Those inputs become constants,
//! `canonicalize` folds the shape arithmetic and names the dims, and the result is compiled as
//! usual. Compiled programs are kept per key, at most [`MAX_SPECIALIZATIONS`] (the oldest is
//! dropped). A graph whose `?` dims depend on anything else stays unsupported, with the
//! compiler's reason.

use std::sync::{Arc, Mutex};

use tessera_ir::{ConstData, DType, Dim, Graph, Tensor, TensorType};

use crate::{CpuError, CpuOptions, Program};

/// Largest integer input treated as a shape-like value.
pub const MAX_KEY_ELEMENTS: usize = 64;
/// Specialized programs kept at once.
pub const MAX_SPECIALIZATIONS: usize = 16;

/// Whether some value's shape has a dim known only from data.
pub fn shapes_depend_on_data(g: &Graph) -> bool {
    g.values().any(|(_, vd)| vd.ty.shape.dims().contains(&Dim::Unknown))
}

/// A graph compiled per value of its shape-like inputs (see the module docs).
pub struct Specializing {
    graph: Graph,
    opts: CpuOptions,
    /// Inputs (by position) whose values key the compiled programs.
    keyed: Vec<usize>,
    /// Passes run on each specialized graph after `canonicalize` (the pipeline the caller
    /// would have run, had the shapes been known).
    pipeline: Option<String>,
    cache: Mutex<Vec<(Vec<Tensor>, Arc<Program>)>>,
}

impl Specializing {
    /// Prepares `g`; nothing is compiled until [`Specializing::run`]. Unsupported when no input
    /// can be shape-like (the `?` dims then depend on computed data).
    pub fn new(g: &Graph, opts: &CpuOptions) -> Result<Specializing, CpuError> {
        let keyed: Vec<usize> = g
            .inputs()
            .iter()
            .enumerate()
            .filter(|(_, (_, v))| {
                let t = g.ty(*v);
                // Scalars of any dtype (a Range's bounds) and short integer vectors.
                (t.rank() == 0 && !t.dtype.is_sub_byte())
                    || (t.dtype.is_int()
                        && t.rank() == 1
                        && t.shape.static_numel().is_none_or(|n| n <= MAX_KEY_ELEMENTS))
            })
            .map(|(i, _)| i)
            .collect();
        if keyed.is_empty() {
            return Err(CpuError::Unsupported(
                "dims `?` known only from computed data (no scalar or short integer input to specialize on)".into(),
            ));
        }
        Ok(Specializing { graph: g.clone(), opts: opts.clone(), keyed, pipeline: None, cache: Mutex::new(Vec::new()) })
    }

    /// As [`Specializing::new`] for a graph not yet optimized: each specialized graph also runs
    /// `pipeline` (a pass list as `tessera_passes::Pipeline::parse` reads it) before it is
    /// compiled, so fusion sees the known shapes.
    pub fn with_pipeline(g: &Graph, opts: &CpuOptions, pipeline: &str) -> Result<Specializing, CpuError> {
        tessera_passes::Pipeline::parse(pipeline).map_err(|e| CpuError::Codegen(format!("pipeline: {e}")))?;
        let mut s = Specializing::new(g, opts)?;
        s.pipeline = Some(pipeline.to_string());
        Ok(s)
    }

    /// The program for these inputs' keyed values: from the cache, or specialized and compiled
    /// now.
    pub fn program(&self, inputs: &[Tensor]) -> Result<Arc<Program>, CpuError> {
        let expected = self.graph.inputs().len();
        if inputs.len() != expected {
            return Err(CpuError::InputCount { expected, actual: inputs.len() });
        }
        let mut key = Vec::with_capacity(self.keyed.len());
        for &i in &self.keyed {
            let t = &inputs[i];
            if t.numel() > MAX_KEY_ELEMENTS {
                let name = &self.graph.inputs()[i].0;
                return Err(CpuError::InputShape {
                    name: name.clone(),
                    actual: t.shape().to_vec(),
                    message: format!("a shape-like input has at most {MAX_KEY_ELEMENTS} elements on the CPU target"),
                });
            }
            key.push(t.clone());
        }
        let mut cache = self.cache.lock().map_err(|_| CpuError::Memory("specialization cache poisoned".into()))?;
        if let Some((_, p)) = cache.iter().find(|(k, _)| k == &key) {
            return Ok(p.clone());
        }
        let program = Arc::new(self.specialize(inputs)?);
        if cache.len() >= MAX_SPECIALIZATIONS {
            cache.remove(0);
        }
        cache.push((key, program.clone()));
        Ok(program)
    }

    /// Runs the graph: compiles it for these keyed values first when needed.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CpuError> {
        self.program(inputs)?.run(inputs)
    }

    /// Programs compiled so far (for reports and tests).
    pub fn specializations(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn specialize(&self, inputs: &[Tensor]) -> Result<Program, CpuError> {
        let mut g = self.graph.clone();
        for &i in &self.keyed {
            let (name, v) = g.inputs()[i].clone();
            let t = &inputs[i];
            let declared = g.ty(v).clone();
            if t.dtype() != declared.dtype {
                return Err(CpuError::InputDtype { name, expected: declared.dtype, actual: t.dtype() });
            }
            if t.dtype() == DType::Bool || t.dtype().bits() < 8 {
                continue;
            }
            let c = g.add_const(TensorType::with_static(t.dtype(), t.shape()), ConstData::from_vec(t.to_bytes()));
            // The input stays in the signature (callers pass the same inputs); only its uses
            // read the constant.
            g.replace_uses(v, c);
        }
        let passes = match &self.pipeline {
            Some(p) if p.trim() == "default" => format!("canonicalize,{}", tessera_passes::DEFAULT_PIPELINE),
            Some(p) if p.trim() != "none" => format!("canonicalize,{p}"),
            _ => "canonicalize".to_string(),
        };
        tessera_passes::Pipeline::parse(&passes)
            .and_then(|p| p.run(&mut g, &mut |_| {}))
            .map_err(|e| CpuError::Codegen(format!("specializing on input values: {e}")))?;
        crate::compile(&g, &self.opts)
    }
}
