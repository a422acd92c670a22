//! Hindsight's eBPF programs. One module per probe family; the maps and globals each
//! family owns live in its module. Built for `bpfel-unknown-none` by `agent/build.rs`.
#![no_std]
#![no_main]

mod exec;
mod locks;
mod offcpu;
mod oncpu;
mod shared;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies `no_std`.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
