//! kmm-loader: everything about kmod artifacts on a node.
//!
//! `.ko` parsing (modinfo), module signatures (verify and sign, byte-compatible with the kernel's sign-file),
//! modprobe semantics over `finit_module`, and kmod images (pull, safe extraction, sign, push).
