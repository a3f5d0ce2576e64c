//! `kmm-loader`: modinfo, verify, sign, extract-cert, load, unload and wait for kernel modules.

fn main() -> std::process::ExitCode {
    kmm_loader::cli::main()
}
