//! Stallscope's kernel programs. Maps are aggregated in the kernel; the agent reads them at the
//! end of a capture window. Every failure to record an event is counted in `COUNTERS`.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod cpu;
mod dump;
mod follow;
mod goroutine;
mod mutex;
mod offcpu;
mod shared;
mod unwind;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
