//! The `gatehouse` binary: everything lives in the library, see `cli`.

/// glibc's allocator showed up at ~7% of a loaded gateway's CPU profile
/// (many short-lived header and body allocations across threads);
/// mimalloc's thread-local free lists cut that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
