//! kmm-e2e: end-to-end tests of kmm-rs against real parts (qemu guest running Debian's kernel, a real OCI
//! registry, a kubelet device-manager simulator). Helpers live here; the tests live in `tests/tests/`.
