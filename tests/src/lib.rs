//! kmm-e2e: end-to-end tests of kmm-rs against real parts (qemu guest running Debian's kernel, a real OCI
//! registry, a kubelet device-manager simulator). Helpers live here; the tests live in `tests/tests/`.
//!
//! - [`debian`]: Debian's kernel packages (image, headers, kbuild) fetched with `apt-get download` and unpacked
//!   into the cache, never installed; `vmlinux` extraction for qemu's PVH boot.
//! - [`kmod_build`]: the out-of-tree fixture modules in `tests/fixtures/` built against Debian's headers.
//! - [`qemu`]: initramfs (cpio newc) + generated `/init` of named scenarios, booted under a hard timeout, judged
//!   from markers on the serial console; the static `kmm-loader` build for the guest.
//! - [`kubelet_sim`]: a kubelet device-manager simulator (Registration server, ListAndWatch consumer, Allocate per
//!   container, restarts that wipe the socket directory); [`device_plugin`]: the real `kmm-device-plugin` binary
//!   run against a temporary host tree; [`device_plugin_bench`]: its benchmark (`cargo xtask bench device-plugin`).
//! - [`registry`]: Debian's `docker-registry` on 127.0.0.1 (plain, or TLS + htpasswd), `skopeo`, OCI layouts and
//!   hostile tar layers for the image tests; [`token_server`]: a bearer-token server (ES256 JWTs, basic
//!   credentials checked) the registry trusts, for the token flow.
//! - [`cache`], [`cmd`]: the shared cache directory (`$KMM_CACHE_DIR` or `~/.cache/kmm-rs`) and host tools.
//!
//! System packages come from `tests/setup/install-deps.sh`; a missing tool is an error naming that script.

pub mod cache;
pub mod cmd;
pub mod debian;
pub mod device_plugin;
pub mod device_plugin_bench;
pub mod kmod_build;
pub mod kubelet_sim;
pub mod qemu;
pub mod registry;
pub mod token_server;
