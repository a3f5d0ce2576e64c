//! A small, bounds-checked reader of ELF section headers (ELF32 and ELF64, either byte order).
//!
//! Only what module tooling needs: find a section by name and borrow its bytes. Every offset read from the file
//! is checked against the buffer, so arbitrary input yields an error, never a panic (see the fuzz target).

use thiserror::Error;

/// Errors of [`find_section`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("failed to parse ELF: not an ELF file")]
    ParseMagic,
    #[error("failed to parse ELF: unsupported class {0} or byte order {1}")]
    ParseIdent(u8, u8),
    #[error("failed to parse ELF: {what} at offset {offset:#x} lies outside the {len}-byte file")]
    ParseBounds {
        what: &'static str,
        offset: u64,
        len: usize,
    },
    #[error("failed to parse ELF: section header size {0} is too small")]
    ParseShentsize(u16),
}

#[derive(Clone, Copy)]
struct Reader<'a> {
    data: &'a [u8],
    is64: bool,
    little: bool,
}

impl<'a> Reader<'a> {
    fn bytes(&self, what: &'static str, offset: u64, len: u64) -> Result<&'a [u8], ElfError> {
        let err = || ElfError::ParseBounds {
            what,
            offset,
            len: self.data.len(),
        };
        let start = usize::try_from(offset).map_err(|_| err())?;
        let len = usize::try_from(len).map_err(|_| err())?;
        let end = start.checked_add(len).ok_or_else(err)?;
        self.data.get(start..end).ok_or_else(err)
    }

    fn uint(&self, what: &'static str, offset: u64, size: u64) -> Result<u64, ElfError> {
        let b = self.bytes(what, offset, size)?;
        let mut v: u64 = 0;
        for i in 0..b.len() {
            let byte = if self.little {
                b[b.len() - 1 - i]
            } else {
                b[i]
            };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    }

    fn half(&self, what: &'static str, offset: u64) -> Result<u16, ElfError> {
        // A 2-byte read always fits in u16.
        Ok(self.uint(what, offset, 2)? as u16)
    }

    /// A native-size word: 8 bytes in ELF64, 4 in ELF32.
    fn word(&self, what: &'static str, offset: u64) -> Result<u64, ElfError> {
        self.uint(what, offset, if self.is64 { 8 } else { 4 })
    }
}

/// One section header, resolved.
#[derive(Debug, Clone, Copy)]
struct Shdr {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
}

const SHT_NOBITS: u32 = 8;

fn header(r: &Reader<'_>) -> Result<(u64, u16, u16, u16), ElfError> {
    // (e_shoff, e_shentsize, e_shnum, e_shstrndx)
    if r.is64 {
        Ok((
            r.word("e_shoff", 0x28)?,
            r.half("e_shentsize", 0x3a)?,
            r.half("e_shnum", 0x3c)?,
            r.half("e_shstrndx", 0x3e)?,
        ))
    } else {
        Ok((
            r.uint("e_shoff", 0x20, 4)?,
            r.half("e_shentsize", 0x2e)?,
            r.half("e_shnum", 0x30)?,
            r.half("e_shstrndx", 0x32)?,
        ))
    }
}

fn shdr(r: &Reader<'_>, shoff: u64, entsize: u16, index: u64) -> Result<Shdr, ElfError> {
    let base = index
        .checked_mul(u64::from(entsize))
        .and_then(|o| o.checked_add(shoff))
        .ok_or(ElfError::ParseBounds {
            what: "section header",
            offset: shoff,
            len: r.data.len(),
        })?;
    let name = r.uint("sh_name", base, 4)? as u32;
    let kind = r.uint("sh_type", base + 4, 4)? as u32;
    let (offset, size) = if r.is64 {
        (
            r.word("sh_offset", base + 0x18)?,
            r.word("sh_size", base + 0x20)?,
        )
    } else {
        (
            r.uint("sh_offset", base + 0x10, 4)?,
            r.uint("sh_size", base + 0x14, 4)?,
        )
    };
    Ok(Shdr {
        name,
        kind,
        offset,
        size,
    })
}

/// Finds the section called `name` and returns its bytes (`Ok(None)` when there is no such section).
/// `SHT_NOBITS` sections yield an empty slice.
pub fn find_section<'a>(data: &'a [u8], name: &[u8]) -> Result<Option<&'a [u8]>, ElfError> {
    if data.len() < 16 || &data[..4] != b"\x7fELF" {
        return Err(ElfError::ParseMagic);
    }
    let (class, order) = (data[4], data[5]);
    let r = match (class, order) {
        (1 | 2, 1 | 2) => Reader {
            data,
            is64: class == 2,
            little: order == 1,
        },
        _ => return Err(ElfError::ParseIdent(class, order)),
    };
    let (shoff, entsize, shnum, shstrndx) = header(&r)?;
    let min_entsize = if r.is64 { 0x28 } else { 0x18 };
    if entsize < min_entsize {
        return Err(ElfError::ParseShentsize(entsize));
    }
    let strtab = shdr(&r, shoff, entsize, u64::from(shstrndx))?;
    let names = r.bytes("section name table", strtab.offset, strtab.size)?;
    for i in 0..u64::from(shnum) {
        let sh = shdr(&r, shoff, entsize, i)?;
        let Some(tail) = usize::try_from(sh.name).ok().and_then(|n| names.get(n..)) else {
            continue;
        };
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if &tail[..end] != name {
            continue;
        }
        if sh.kind == SHT_NOBITS {
            return Ok(Some(&[]));
        }
        return r.bytes("section", sh.offset, sh.size).map(Some);
    }
    Ok(None)
}

/// Builds a minimal little-endian ELF64 relocatable with the given (name, contents) sections.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn build_elf64(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; 0x40];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    let mut shstrtab = vec![0u8];
    let mut placed = Vec::new();
    for (name, data) in sections {
        let name_off = shstrtab.len() as u32;
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
        placed.push((name_off, out.len() as u64, data.len() as u64));
        out.extend_from_slice(data);
    }
    let str_name = shstrtab.len() as u32;
    shstrtab.extend_from_slice(b".shstrtab\0");
    let str_off = out.len() as u64;
    out.extend_from_slice(&shstrtab);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len() as u64;
    out.extend_from_slice(&[0u8; 0x40]); // null section
    let push_sh = |out: &mut Vec<u8>, name: u32, kind: u32, off: u64, size: u64| {
        let mut sh = [0u8; 0x40];
        sh[0..4].copy_from_slice(&name.to_le_bytes());
        sh[4..8].copy_from_slice(&kind.to_le_bytes());
        sh[0x18..0x20].copy_from_slice(&off.to_le_bytes());
        sh[0x20..0x28].copy_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&sh);
    };
    for (name, off, size) in &placed {
        push_sh(&mut out, *name, 1, *off, *size);
    }
    push_sh(&mut out, str_name, 3, str_off, shstrtab.len() as u64);
    let shnum = (placed.len() + 2) as u16;
    out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&(shnum - 1).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn finds_sections_by_name() {
        let elf = build_elf64(&[
            (".text", b"\x90\x90"),
            (".modinfo", b"license=GPL\0name=x\0"),
        ]);
        assert_eq!(
            find_section(&elf, b".modinfo").unwrap(),
            Some(&b"license=GPL\0name=x\0"[..])
        );
        assert_eq!(
            find_section(&elf, b".text").unwrap(),
            Some(&b"\x90\x90"[..])
        );
        assert_eq!(find_section(&elf, b".data").unwrap(), None);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(
            find_section(b"hello world, not elf", b".modinfo"),
            Err(ElfError::ParseMagic)
        );
        let elf = build_elf64(&[(".modinfo", b"a=b\0")]);
        for cut in [16, 0x30, elf.len() - 0x30] {
            assert!(
                find_section(&elf[..cut], b".modinfo").is_err(),
                "cut at {cut}"
            );
        }
        let mut bad = elf.clone();
        bad[4] = 9;
        assert_eq!(
            find_section(&bad, b".modinfo"),
            Err(ElfError::ParseIdent(9, 1))
        );
    }
}
