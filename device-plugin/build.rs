//! Generates the kubelet device plugin API v1beta1 (client and server stubs) into OUT_DIR from the vendored proto.
//! protox parses the proto in Rust, so no protoc binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/deviceplugin-v1beta1.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    // Pack the binary's relative relocations (DT_RELR, glibc >= 2.36): the dynamic loader reads every RELA entry at
    // start, ~800 KiB that would stay resident in an agent whose whole idle RSS is ~10 MiB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    let fds = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
