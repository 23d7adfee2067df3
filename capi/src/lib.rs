//! Tessera's C API: `libtessera.so` and `include/tessera.h`.
//!
//! A C program opens a session from an ahead-of-time artifact (`tessera compile`, `.tsa`) or
//! from a model file (`.onnx`, `.tir`: compiled by the JIT at startup, optionally through the
//! JIT cache), asks for its inputs and outputs, runs it any number of times, and reads errors as
//! strings. The header is generated from this file by cbindgen (`cbindgen.toml`); the test
//! `header_is_current` fails when it drifts (`TESSERA_BLESS=1` rewrites it).
//!
//! Conventions:
//! - Every fallible function returns a `TesseraStatus`; on failure,
//!   `tessera_last_error` gives the message (per thread, until the next failing call there).
//! - Objects the library makes (`TesseraSession`, `TesseraOutputs`) are freed by their
//!   `_free` function; strings and arrays it hands out live as long as the object they came from.
//! - A session may be used from several threads at once (`tessera_session_run` takes it shared).
//! - Tensor bytes are the element type's packed layout, row-major, little-endian (sub-byte types
//!   as `ir/src/dtype.rs` describes).
//! - A Rust panic never crosses the boundary: it becomes `TESSERA_STATUS_INTERNAL`.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use tessera_runtime::{DType, Session, SessionOptions, Tensor, TensorType};

/// What a call did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TesseraStatus {
    Ok = 0,
    /// A null pointer, an index out of range, a path that is not UTF-8, a tensor whose byte
    /// length does not match its shape: the message names the argument.
    InvalidArgument = 1,
    /// The model or artifact could not be opened, imported, checked or compiled.
    Load = 2,
    /// The inputs do not match the model's signature, or a kernel failed.
    Run = 3,
    /// A bug in Tessera (a caught panic): the message says where; please report it.
    Internal = 4,
}

/// Element types, in the order of Tessera's IR.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TesseraDtype {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
    I64 = 3,
    I32 = 4,
    I16 = 5,
    I8 = 6,
    U8 = 7,
    I4 = 8,
    U4 = 9,
    Ternary = 10,
    Binary = 11,
    Bool = 12,
}

impl From<DType> for TesseraDtype {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => TesseraDtype::F32,
            DType::F16 => TesseraDtype::F16,
            DType::BF16 => TesseraDtype::Bf16,
            DType::I64 => TesseraDtype::I64,
            DType::I32 => TesseraDtype::I32,
            DType::I16 => TesseraDtype::I16,
            DType::I8 => TesseraDtype::I8,
            DType::U8 => TesseraDtype::U8,
            DType::I4 => TesseraDtype::I4,
            DType::U4 => TesseraDtype::U4,
            DType::Ternary => TesseraDtype::Ternary,
            DType::Binary => TesseraDtype::Binary,
            DType::Bool => TesseraDtype::Bool,
        }
    }
}

/// Options for `tessera_session_open`; a null pointer means all defaults.
#[repr(C)]
pub struct TesseraOptions {
    /// Threads for the CPU kernels; 0 means every core.
    pub threads: u32,
    /// A folder for the JIT cache (model files only): the compiled model is stored there and
    /// later sessions load it instead of compiling. Null: no cache.
    pub cache_dir: *const c_char,
}

/// A tensor handed to or from the library. `dtype` is a `TesseraDtype` value; `shape` has
/// `rank` entries; `data` has `byte_len` bytes in the dtype's packed layout.
#[repr(C)]
pub struct TesseraTensor {
    pub dtype: u32,
    pub rank: usize,
    pub shape: *const i64,
    pub data: *const c_void,
    pub byte_len: usize,
}

/// One input or output of a session's model. `dims` has `rank` entries, -1 for a dim whose
/// size is known only when the model runs; `dim_names` has `rank` entries, the symbolic name of
/// such a dim (`"seq"`), or null for a static dim.
#[repr(C)]
pub struct TesseraPort {
    pub name: *const c_char,
    pub dtype: TesseraDtype,
    pub rank: usize,
    pub dims: *const i64,
    pub dim_names: *const *const c_char,
}

struct Port {
    name: CString,
    dtype: TesseraDtype,
    dims: Vec<i64>,
    // Owns the strings `dim_name_ptrs` points into.
    _dim_names: Vec<Option<CString>>,
    dim_name_ptrs: Vec<*const c_char>,
}

impl Port {
    fn new(name: &str, t: &TensorType) -> Port {
        let dims = t.shape.dims();
        let dim_names: Vec<Option<CString>> = dims
            .iter()
            .map(|d| match d.as_static() {
                Some(_) => None,
                None => Some(cstring(&d.to_string())),
            })
            .collect();
        let dim_name_ptrs = dim_names.iter().map(|n| n.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())).collect();
        Port {
            name: cstring(name),
            dtype: t.dtype.into(),
            dims: dims.iter().map(|d| d.as_static().map_or(-1, |n| n as i64)).collect(),
            _dim_names: dim_names,
            dim_name_ptrs,
        }
    }

    fn describe(&self) -> TesseraPort {
        TesseraPort {
            name: self.name.as_ptr(),
            dtype: self.dtype,
            rank: self.dims.len(),
            dims: self.dims.as_ptr(),
            dim_names: self.dim_name_ptrs.as_ptr(),
        }
    }
}

/// An opened model, ready to run (opaque).
pub struct TesseraSession {
    session: Session,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
}

// The raw pointers in `Port` point into the `CString`s the same `Port` owns, which are never
// changed after the session is made.
unsafe impl Send for TesseraSession {}
unsafe impl Sync for TesseraSession {}

/// The outputs of one run (opaque).
pub struct TesseraOutputs {
    tensors: Vec<(DType, Vec<i64>, Vec<u8>)>,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).expect("NULs replaced")
}

struct Failure(TesseraStatus, String);

fn fail<T>(status: TesseraStatus, msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(status, msg.into()))
}

/// Runs `f`, turning its error or panic into a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> TesseraStatus {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Failure(TesseraStatus::Internal, format!("internal error (a bug in Tessera, please report it): {msg}")))
    });
    match outcome {
        Ok(()) => TesseraStatus::Ok,
        Err(Failure(status, msg)) => {
            LAST_ERROR.with(|e| *e.borrow_mut() = Some(cstring(&msg)));
            status
        }
    }
}

fn non_null<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller promises `p` is null or points to a live `T` (documented per function).
    unsafe { p.as_ref() }.map_or_else(|| fail(TesseraStatus::InvalidArgument, format!("{what} is null")), Ok)
}

fn path_arg(p: *const c_char, what: &str) -> Result<PathBuf, Failure> {
    if p.is_null() {
        return fail(TesseraStatus::InvalidArgument, format!("{what} is null"));
    }
    // SAFETY: the caller promises a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    match s.to_str() {
        Ok(s) => Ok(PathBuf::from(s)),
        Err(_) => fail(TesseraStatus::InvalidArgument, format!("{what} is not UTF-8")),
    }
}

/// Tessera's version, as a static string.
#[no_mangle]
pub extern "C" fn tessera_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last call that failed on this thread, or null if none has. The string
/// stays valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn tessera_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
}

/// Opens `path`: an artifact (`.tsa`, loaded without compiling) or a model file (`.onnx`,
/// `.tir`: imported, optimized and JIT-compiled for this CPU, or loaded from the JIT cache when
/// `options->cache_dir` is set). On success `*out` holds the session (free it with
/// `tessera_session_free`); on failure `*out` is null.
///
/// # Safety
/// `path` is a NUL-terminated string; `options` is null or points to a `TesseraOptions` whose
/// `cache_dir` is null or NUL-terminated; `out` points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn tessera_session_open(
    path: *const c_char,
    options: *const TesseraOptions,
    out: *mut *mut TesseraSession,
) -> TesseraStatus {
    guard(|| {
        if out.is_null() {
            return fail(TesseraStatus::InvalidArgument, "out is null");
        }
        // SAFETY: checked non-null; the caller promises it is writable.
        unsafe { *out = std::ptr::null_mut() };
        let path = path_arg(path, "path")?;
        let mut opts = SessionOptions::default();
        // SAFETY: the caller promises null or a valid `TesseraOptions`.
        if let Some(o) = unsafe { options.as_ref() } {
            if o.threads > 0 {
                opts.threads = o.threads as usize;
            }
            if !o.cache_dir.is_null() {
                opts.cache_dir = Some(path_arg(o.cache_dir, "options->cache_dir")?);
            }
        }
        let session = Session::from_file(&path, &opts)
            .or_else(|e| fail(TesseraStatus::Load, format!("{}: {e}", path.display())))?;
        let ports = |list: Vec<(String, TensorType)>| list.iter().map(|(n, t)| Port::new(n, t)).collect();
        let s = TesseraSession { inputs: ports(session.inputs()), outputs: ports(session.outputs()), session };
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(Box::new(s)) };
        Ok(())
    })
}

/// Frees a session (null is ignored). Outputs already returned stay valid.
///
/// # Safety
/// `session` is null or came from `tessera_session_open` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tessera_session_free(session: *mut TesseraSession) {
    if !session.is_null() {
        // SAFETY: the caller promises it came from `Box::into_raw` in `tessera_session_open`.
        drop(unsafe { Box::from_raw(session) });
    }
}

/// How many inputs the session's model takes (0 for a null session).
///
/// # Safety
/// `session` is null or a live session.
#[no_mangle]
pub unsafe extern "C" fn tessera_session_input_count(session: *const TesseraSession) -> usize {
    // SAFETY: the caller promises null or a live session.
    unsafe { session.as_ref() }.map_or(0, |s| s.inputs.len())
}

/// How many outputs the session's model gives (0 for a null session).
///
/// # Safety
/// `session` is null or a live session.
#[no_mangle]
pub unsafe extern "C" fn tessera_session_output_count(session: *const TesseraSession) -> usize {
    // SAFETY: the caller promises null or a live session.
    unsafe { session.as_ref() }.map_or(0, |s| s.outputs.len())
}

unsafe fn port(session: *const TesseraSession, index: usize, out: *mut TesseraPort, outputs: bool) -> TesseraStatus {
    guard(|| {
        let s = non_null(session, "session")?;
        if out.is_null() {
            return fail(TesseraStatus::InvalidArgument, "out is null");
        }
        let (list, kind) = if outputs { (&s.outputs, "output") } else { (&s.inputs, "input") };
        let Some(p) = list.get(index) else {
            return fail(
                TesseraStatus::InvalidArgument,
                format!("{kind} index {index} is out of range: the model has {} {kind}s", list.len()),
            );
        };
        // SAFETY: checked non-null; the caller promises it is writable.
        unsafe { *out = p.describe() };
        Ok(())
    })
}

/// Describes input `index` of the session's model into `*out` (its strings and arrays live as
/// long as the session).
///
/// # Safety
/// `session` is a live session; `out` points to writable storage for a `TesseraPort`.
#[no_mangle]
pub unsafe extern "C" fn tessera_session_input(
    session: *const TesseraSession,
    index: usize,
    out: *mut TesseraPort,
) -> TesseraStatus {
    // SAFETY: forwarded from the caller.
    unsafe { port(session, index, out, false) }
}

/// Describes output `index` of the session's model into `*out` (its strings and arrays live as
/// long as the session; a dim of -1 is known only after a run).
///
/// # Safety
/// `session` is a live session; `out` points to writable storage for a `TesseraPort`.
#[no_mangle]
pub unsafe extern "C" fn tessera_session_output(
    session: *const TesseraSession,
    index: usize,
    out: *mut TesseraPort,
) -> TesseraStatus {
    // SAFETY: forwarded from the caller.
    unsafe { port(session, index, out, true) }
}

/// Reads the C tensors into owned tensors, checking each against the model's input count.
unsafe fn read_inputs(s: &TesseraSession, inputs: *const TesseraTensor, count: usize) -> Result<Vec<Tensor>, Failure> {
    if count != s.inputs.len() {
        let names: Vec<_> = s.inputs.iter().map(|p| p.name.to_string_lossy().into_owned()).collect();
        return fail(
            TesseraStatus::InvalidArgument,
            format!("{count} inputs given; the model takes {}: {}", names.len(), names.join(", ")),
        );
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    if inputs.is_null() {
        return fail(TesseraStatus::InvalidArgument, "inputs is null");
    }
    // SAFETY: the caller promises `count` tensors at `inputs`.
    let list = unsafe { std::slice::from_raw_parts(inputs, count) };
    let mut out = Vec::with_capacity(count);
    for (i, (t, p)) in list.iter().zip(&s.inputs).enumerate() {
        let name = p.name.to_string_lossy();
        let at = || format!("input {i} ({name})");
        let Some(&dtype) = DType::ALL.get(t.dtype as usize) else {
            return fail(TesseraStatus::InvalidArgument, format!("{}: dtype {} is not a TesseraDtype", at(), t.dtype));
        };
        if t.rank > 0 && t.shape.is_null() {
            return fail(TesseraStatus::InvalidArgument, format!("{}: shape is null", at()));
        }
        if t.byte_len > 0 && t.data.is_null() {
            return fail(TesseraStatus::InvalidArgument, format!("{}: data is null", at()));
        }
        // SAFETY: the caller promises `rank` dims at `shape` and `byte_len` bytes at `data`.
        let (shape, bytes) = unsafe {
            (
                if t.rank == 0 { &[][..] } else { std::slice::from_raw_parts(t.shape, t.rank) },
                if t.byte_len == 0 { &[][..] } else { std::slice::from_raw_parts(t.data.cast::<u8>(), t.byte_len) },
            )
        };
        let mut dims = Vec::with_capacity(shape.len());
        for (axis, &d) in shape.iter().enumerate() {
            match usize::try_from(d) {
                Ok(d) => dims.push(d),
                Err(_) => return fail(TesseraStatus::InvalidArgument, format!("{}: dim {axis} is {d}", at())),
            }
        }
        let tensor = Tensor::from_bytes(dtype, &dims, bytes)
            .or_else(|e| fail(TesseraStatus::InvalidArgument, format!("{}: {e}", at())))?;
        out.push(tensor);
    }
    Ok(out)
}

/// Runs the session on `input_count` inputs in the model's input order. On success `*out` holds
/// the outputs (free them with `tessera_outputs_free`); on failure it is null.
///
/// # Safety
/// `session` is a live session; `inputs` points to `input_count` tensors whose `shape` and
/// `data` are valid for `rank` dims and `byte_len` bytes; `out` points to writable storage for
/// one pointer.
#[no_mangle]
pub unsafe extern "C" fn tessera_session_run(
    session: *const TesseraSession,
    inputs: *const TesseraTensor,
    input_count: usize,
    out: *mut *mut TesseraOutputs,
) -> TesseraStatus {
    guard(|| {
        if out.is_null() {
            return fail(TesseraStatus::InvalidArgument, "out is null");
        }
        // SAFETY: checked non-null; the caller promises it is writable.
        unsafe { *out = std::ptr::null_mut() };
        let s = non_null(session, "session")?;
        // SAFETY: forwarded from the caller.
        let inputs = unsafe { read_inputs(s, inputs, input_count) }?;
        let outs = s.session.run(&inputs).or_else(|e| fail(TesseraStatus::Run, e.to_string()))?;
        let tensors =
            outs.iter().map(|t| (t.dtype(), t.shape().iter().map(|&d| d as i64).collect(), t.to_bytes())).collect();
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(Box::new(TesseraOutputs { tensors })) };
        Ok(())
    })
}

/// Runs the session and writes output `j` into `buffers[j]`, which must hold exactly
/// `sizes[j]` bytes, the output's byte size (for outputs with symbolic dims, run
/// `tessera_session_run` once to learn it).
///
/// # Safety
/// As `tessera_session_run`; `buffers` and `sizes` point to `output_count` entries, each
/// buffer writable for its size.
#[no_mangle]
pub unsafe extern "C" fn tessera_session_run_into(
    session: *const TesseraSession,
    inputs: *const TesseraTensor,
    input_count: usize,
    buffers: *const *mut c_void,
    sizes: *const usize,
    output_count: usize,
) -> TesseraStatus {
    guard(|| {
        let s = non_null(session, "session")?;
        if output_count != s.outputs.len() {
            return fail(
                TesseraStatus::InvalidArgument,
                format!("{output_count} output buffers given; the model has {} outputs", s.outputs.len()),
            );
        }
        if output_count > 0 && (buffers.is_null() || sizes.is_null()) {
            return fail(TesseraStatus::InvalidArgument, "buffers or sizes is null");
        }
        // SAFETY: forwarded from the caller.
        let inputs = unsafe { read_inputs(s, inputs, input_count) }?;
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(output_count);
        for j in 0..output_count {
            // SAFETY: the caller promises `output_count` entries in each array.
            let (b, n) = unsafe { (*buffers.add(j), *sizes.add(j)) };
            if b.is_null() && n > 0 {
                return fail(TesseraStatus::InvalidArgument, format!("buffers[{j}] is null"));
            }
            // SAFETY: the caller promises `n` writable bytes at `b`, not aliasing another buffer.
            slices.push(if n == 0 { &mut [] } else { unsafe { std::slice::from_raw_parts_mut(b.cast::<u8>(), n) } });
        }
        s.session.run_into(&inputs, &mut slices).or_else(|e| fail(TesseraStatus::Run, e.to_string()))
    })
}

/// How many tensors a run gave (0 for null).
///
/// # Safety
/// `outputs` is null or came from `tessera_session_run` and is not freed.
#[no_mangle]
pub unsafe extern "C" fn tessera_outputs_count(outputs: *const TesseraOutputs) -> usize {
    // SAFETY: the caller promises null or live outputs.
    unsafe { outputs.as_ref() }.map_or(0, |o| o.tensors.len())
}

/// Output `index` of a run: its dtype, shape and bytes, valid until the outputs are freed.
///
/// # Safety
/// `outputs` came from `tessera_session_run` and is not freed; `out` points to writable
/// storage for a `TesseraTensor`.
#[no_mangle]
pub unsafe extern "C" fn tessera_outputs_get(
    outputs: *const TesseraOutputs,
    index: usize,
    out: *mut TesseraTensor,
) -> TesseraStatus {
    guard(|| {
        let o = non_null(outputs, "outputs")?;
        if out.is_null() {
            return fail(TesseraStatus::InvalidArgument, "out is null");
        }
        let Some((dtype, shape, bytes)) = o.tensors.get(index) else {
            return fail(
                TesseraStatus::InvalidArgument,
                format!("output index {index} is out of range: the run gave {} outputs", o.tensors.len()),
            );
        };
        // SAFETY: checked non-null; the caller promises it is writable.
        unsafe {
            *out = TesseraTensor {
                dtype: TesseraDtype::from(*dtype) as u32,
                rank: shape.len(),
                shape: shape.as_ptr(),
                data: bytes.as_ptr().cast(),
                byte_len: bytes.len(),
            }
        };
        Ok(())
    })
}

/// Frees a run's outputs (null is ignored).
///
/// # Safety
/// `outputs` is null or came from `tessera_session_run` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tessera_outputs_free(outputs: *mut TesseraOutputs) {
    if !outputs.is_null() {
        // SAFETY: the caller promises it came from `Box::into_raw` in `tessera_session_run`.
        drop(unsafe { Box::from_raw(outputs) });
    }
}

/// The name of a dtype (`"f32"`, `"i64"`, ...), as a static string; null for an invalid value.
#[no_mangle]
pub extern "C" fn tessera_dtype_name(dtype: u32) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<CString>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| DType::ALL.iter().map(|d| cstring(d.name())).collect());
    names.get(dtype as usize).map_or(std::ptr::null(), |s| s.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: `tessera_last_error` returns null or a live NUL-terminated string.
        unsafe { CStr::from_ptr(tessera_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn dtype_values_and_names_are_the_irs() {
        for (i, d) in DType::ALL.iter().enumerate() {
            assert_eq!(TesseraDtype::from(*d) as usize, i);
            // SAFETY: a static NUL-terminated string for every valid value.
            assert_eq!(unsafe { CStr::from_ptr(tessera_dtype_name(i as u32)) }.to_str().unwrap(), d.name());
        }
        assert!(tessera_dtype_name(DType::ALL.len() as u32).is_null());
    }

    #[test]
    fn bad_arguments_are_typed_errors_with_messages() {
        let mut s: *mut TesseraSession = std::ptr::NonNull::dangling().as_ptr();
        // SAFETY: valid pointers or nulls, as each function documents.
        unsafe {
            assert_eq!(
                tessera_session_open(std::ptr::null(), std::ptr::null(), &mut s),
                TesseraStatus::InvalidArgument
            );
            assert!(s.is_null(), "out is cleared on failure");
            assert_eq!(last_error(), "path is null");
            let missing = c"/nonexistent/model.tsa";
            assert_eq!(tessera_session_open(missing.as_ptr(), std::ptr::null(), &mut s), TesseraStatus::Load);
            assert!(last_error().starts_with("/nonexistent/model.tsa: "), "{}", last_error());
            assert_eq!(
                tessera_session_open(missing.as_ptr(), std::ptr::null(), std::ptr::null_mut()),
                TesseraStatus::InvalidArgument
            );
            let mut o: *mut TesseraOutputs = std::ptr::null_mut();
            assert_eq!(
                tessera_session_run(std::ptr::null(), std::ptr::null(), 0, &mut o),
                TesseraStatus::InvalidArgument
            );
            assert_eq!(last_error(), "session is null");
            assert_eq!(tessera_session_input_count(std::ptr::null()), 0);
            tessera_session_free(std::ptr::null_mut());
            tessera_outputs_free(std::ptr::null_mut());
        }
    }

    #[test]
    fn panics_become_internal_errors() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, TesseraStatus::Internal);
        assert!(last_error().contains("boom") && last_error().contains("please report"), "{}", last_error());
    }
}
