//! `extern "C"` shims only: check pointers and lengths, convert, call the Rust API, map the
//! result to a C code. Every body opens with [`ffi_body!`], which runs it inside the panic guard
//! (a panic becomes an error value, never an unwind across the C boundary) and looks up its
//! handle argument.

// These are C entry points: pointer validity is the C caller's contract, documented per
// function in the header; each shim checks for NULL before it dereferences anything.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
// Inside an unsafe fn every unsafe operation still needs its own block (and reason).
#![deny(unsafe_op_in_unsafe_fn)]

#[macro_use]
pub(crate) mod guard;

pub mod conninfo;
#[doc(hidden)]
pub mod fuzzing;
pub mod hal;
pub mod log;
pub mod mqtt;
pub mod ota;
pub mod resume;
