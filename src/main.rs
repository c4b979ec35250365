//! The `keyledger` binary: parse the command line and hand over to the library.

// Replays and bulk loads allocate many short-lived buffers; glibc malloc spent
// ~40% of a rebuild in consolidation (perf, see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keyledger::cli::main()
}
