//! `extern "C"` shims only: check pointers and lengths, convert, call the Rust API, map the
//! result to a C code. Every body opens with `ffi_body!` (`src/ffi/guard.rs`), which runs it
//! inside the panic guard (a panic becomes an error value, never an unwind across the C
//! boundary) and looks up its handle argument.
//!
//! These functions are part of the Rust API too (tests and `fuzz/` call them as C does). One rule
//! decides which are `unsafe`: a function is `unsafe extern "C" fn`, with a `# Safety` section
//! that `ota.h` repeats, when it reads or writes through a pointer argument (strings, buffers,
//! parameter tables, MQTT handles, whose first bytes are read). Functions whose only pointer is
//! an OTA handle stay safe: that handle is a key into a table, compared and never dereferenced,
//! so any value is sound. clippy's `not_unsafe_ptr_arg_deref` holds the safe ones to that.

// Inside an unsafe fn every unsafe operation still needs its own block (and reason).
#![deny(unsafe_op_in_unsafe_fn)]

#[macro_use]
pub(crate) mod guard;

mod answer;
pub mod conninfo;
pub mod delta;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod hal;
pub mod image;
pub mod ioctl;
pub mod log;
pub mod mqtt;
pub mod ota;
pub mod package;
mod printf;
pub mod resume;
