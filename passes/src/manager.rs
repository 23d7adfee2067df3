//! The pass manager: passes registered by name, pipelines parsed from text
//! (`canonicalize,saturate,fuse`), the verifier after every pass, and an observer that sees the
//! graph before and after each pass (for `--print-ir-after`, `--dump-dir` and `--time-passes`).

use std::time::{Duration, Instant};
use tessera_ir::{verify, Graph};

/// What a pass reports besides the rewritten graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    /// Whether the graph changed.
    pub changed: bool,
    /// Facts worth showing in dumps: counts, limits hit.
    pub notes: Vec<String>,
}

impl PassReport {
    pub fn changed(changed: bool) -> PassReport {
        PassReport { changed, notes: Vec::new() }
    }

    pub fn note(mut self, note: impl Into<String>) -> PassReport {
        self.notes.push(note.into());
        self
    }
}

/// Why a pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("unknown pass `{name}` (known passes: {known})")]
    UnknownPass { name: String, known: String },
    #[error("pass `{pass}` cannot handle this graph: {message}")]
    Failed { pass: &'static str, message: String },
    #[error("pass `{pass}` produced a graph that does not verify (a bug in the pass): {errors}")]
    Broken { pass: &'static str, errors: tessera_ir::VerifyErrors },
}

/// A graph pass.
pub trait Pass {
    /// The name used in pipelines, CLI flags and filetest headers (`fold-constants`).
    fn name(&self) -> &'static str;
    /// One line for `--help` and docs.
    fn description(&self) -> &'static str;
    /// Rewrites the graph in place.
    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError>;
}

/// Every registered pass, in the order `--list-passes` shows them.
pub fn registry() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(crate::fold_constants::FoldConstants),
        Box::new(crate::simplify_layout::SimplifyLayout),
        Box::new(crate::cse::Cse),
        Box::new(crate::dce::Dce),
        Box::new(crate::refine_types::RefineTypes),
        Box::new(crate::canonicalize::Canonicalize),
        #[cfg(feature = "saturate")]
        Box::new(crate::saturate::Saturate::default()),
        Box::new(crate::fold_dequantize::FoldDequantize),
        Box::new(crate::fuse::Fuse),
        Box::new(crate::schedule::Schedule::default()),
        Box::new(crate::plan_memory::PlanMemory::default()),
    ]
}

/// The pipeline `tessera ir` runs when none is named.
pub const DEFAULT_PIPELINE: &str = "canonicalize,saturate,fold-dequantize,fuse,schedule,plan-memory";

/// Looks a pass up by name.
pub fn lookup(name: &str) -> Result<Box<dyn Pass>, PassError> {
    registry().into_iter().find(|p| p.name() == name).ok_or_else(|| PassError::UnknownPass {
        name: name.to_string(),
        known: registry().iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
    })
}

/// An event the observer sees.
pub enum Event<'a> {
    Before { pass: &'static str, index: usize, graph: &'a Graph },
    After { pass: &'static str, index: usize, graph: &'a Graph, report: &'a PassReport, elapsed: Duration },
}

/// A list of passes run in order.
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
    /// Run the verifier after every pass (on in tests and debug builds by default).
    pub verify_each: bool,
}

impl Pipeline {
    /// Parses `a,b,c`; `none` or the empty string is the empty pipeline. Unknown names are an
    /// error that lists the known passes.
    /// Parses `a,b,c`; `none` (or nothing) is the empty pipeline and `default` is
    /// [`DEFAULT_PIPELINE`].
    pub fn parse(text: &str) -> Result<Pipeline, PassError> {
        let text = if text.trim() == "default" { DEFAULT_PIPELINE } else { text };
        let names: Vec<&str> = text.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "none").collect();
        let passes = names.into_iter().map(lookup).collect::<Result<Vec<_>, _>>()?;
        Ok(Pipeline { passes, verify_each: cfg!(debug_assertions) })
    }

    pub fn default_pipeline() -> Pipeline {
        Pipeline::parse(DEFAULT_PIPELINE).expect("the default pipeline names registered passes")
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs every pass; the observer sees the graph around each one.
    pub fn run(
        &self,
        g: &mut Graph,
        observer: &mut dyn FnMut(Event),
    ) -> Result<Vec<(&'static str, PassReport, Duration)>, PassError> {
        let mut reports = Vec::new();
        for (index, pass) in self.passes.iter().enumerate() {
            observer(Event::Before { pass: pass.name(), index, graph: g });
            let start = Instant::now();
            let report = pass.run(g)?;
            let elapsed = start.elapsed();
            if self.verify_each {
                verify(g).map_err(|errors| PassError::Broken { pass: pass.name(), errors })?;
            }
            observer(Event::After { pass: pass.name(), index, graph: g, report: &report, elapsed });
            reports.push((pass.name(), report, elapsed));
        }
        Ok(reports)
    }
}
