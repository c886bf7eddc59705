//! `extern "C"` shims only: check pointers and lengths, convert, call the Rust API, map the
//! result to a C code. Every body runs inside [`ffi_guard!`], so a panic becomes an error value
//! (never an unwind across the C boundary).

#[macro_use]
mod guard;

pub mod conninfo;
pub mod hal;
pub mod log;
pub mod mqtt;
pub mod ota;
