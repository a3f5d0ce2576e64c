//! kmm-loader: everything about kmod artifacts on a node.
//!
//! `.ko` parsing (modinfo), module signatures (verify and sign, byte-compatible with the kernel's sign-file),
//! modprobe semantics over `finit_module`, and kmod images (pull, safe extraction, sign, push).
//!
//! - [`elf`] finds sections in ELF files; [`compress`] handles `.ko.xz`/`.ko.zst`/`.ko.gz`;
//! - [`modinfo`] reads `.modinfo` and the signature facts like kmod's `modinfo`;
//! - [`keys`] loads certificates and private keys and extracts the kernel's built-in certificate;
//! - [`signature`] parses and verifies appended PKCS#7 signatures, [`sign`] writes them like `sign-file`;
//! - [`modprobe`] plans and performs loads and unloads (dependencies, softdeps, in-tree removal, firmware);
//! - [`cli`] is the `kmm-loader` command line.

pub mod cli;
pub mod compress;
pub mod elf;
pub mod fastrsa;
pub mod image;
pub mod keys;
pub mod modinfo;
pub mod modprobe;
pub mod par;
pub mod sign;
pub mod signature;
#[cfg(test)]
mod test_keys;
