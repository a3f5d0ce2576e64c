//! `modinfo`: the `.modinfo` fields of a module plus its signature facts, in the order and format of Debian's
//! kmod `modinfo` (libkmod's `kmod_module_get_info` and `tools/modinfo.c`).

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::compress::{self, Compression};
use crate::elf;
use crate::signature::{self, PKEY_ID_PKCS7};

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ModinfoError {
    #[error("failed to read module {path}")]
    ReadModule {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to decompress module {path}")]
    DecompressModule {
        path: PathBuf,
        #[source]
        source: compress::CompressError,
    },
    #[error("failed to parse module {path}")]
    ParseElf {
        path: PathBuf,
        #[source]
        source: elf::ElfError,
    },
    #[error("failed to read modinfo of {path}: no .modinfo section")]
    ReadModinfo { path: PathBuf },
}

/// A module file read into memory and decompressed.
#[derive(Debug, Clone)]
pub struct ModuleFile {
    pub path: PathBuf,
    pub compression: Compression,
    /// The decompressed image (ELF plus any appended signature).
    pub image: Vec<u8>,
}

/// Reads and decompresses a `.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`.
pub fn read_module(path: &Path) -> Result<ModuleFile, ModinfoError> {
    let raw = std::fs::read(path).map_err(|source| ModinfoError::ReadModule {
        path: path.to_path_buf(),
        source,
    })?;
    let compression = Compression::detect(&raw, Some(path));
    let image = match compression {
        Compression::None => raw,
        c => compress::decompress(c, &raw).map_err(|source| ModinfoError::DecompressModule {
            path: path.to_path_buf(),
            source,
        })?,
    };
    Ok(ModuleFile {
        path: path.to_path_buf(),
        compression,
        image,
    })
}

/// One `key=value` entry. Values are bytes, printed verbatim like kmod does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub key: String,
    pub value: Vec<u8>,
}

impl Field {
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// A module parameter, merged from `parm=` and `parmtype=` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub description: Option<String>,
    pub kind: Option<String>,
}

/// The `.modinfo` fields in file order, followed by the signature fields (`sig_id`, `signer`, `sig_key`,
/// `sig_hashalgo`, `signature`) when the module is signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub fields: Vec<Field>,
}

/// Splits a `.modinfo` section into strings like `kmod_elf_get_strings`: runs of NULs separate strings, leading
/// NULs are skipped, and a remainder of one byte or less yields nothing.
fn modinfo_strings(section: &[u8]) -> Vec<&[u8]> {
    let start = section
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(section.len());
    // kmod strips leading NULs but keeps at least one byte, and returns nothing when one byte or less remains.
    let start = start.min(section.len().saturating_sub(1));
    let rest = &section[start..];
    if rest.len() <= 1 {
        return Vec::new();
    }
    rest.split(|&b| b == 0).filter(|s| !s.is_empty()).collect()
}

const PKEY_ALGO: [&str; 2] = ["DSA", "RSA"];
const PKEY_HASH: [&str; 9] = [
    "md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "sm3",
];
const PKEY_ID: [&str; 3] = ["PGP", "X509", "PKCS#7"];

/// kmod's hex formatting: `AA:BB:...`, a line break plus two tabs after every 20 bytes.
pub fn kmod_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3 + bytes.len() / 20 * 3);
    for (i, b) in bytes.iter().enumerate() {
        s.push_str(&format!("{b:02X}"));
        if i + 1 < bytes.len() {
            s.push(':');
            if (i + 1) % 20 == 0 {
                s.push_str("\n\t\t");
            }
        }
    }
    s
}

fn signature_fields(image: &[u8]) -> Vec<Field> {
    let Ok(Some(app)) = signature::split(image) else {
        return Vec::new();
    };
    if usize::from(app.algo) >= PKEY_ALGO.len()
        || usize::from(app.hash) >= PKEY_HASH.len()
        || usize::from(app.id_type) >= PKEY_ID.len()
    {
        return Vec::new();
    }
    let id = PKEY_ID[usize::from(app.id_type)];
    let (signer, key_id, hash, sig) = if app.id_type == PKEY_ID_PKCS7 {
        let Ok(p7) = signature::parse_pkcs7(app.sig) else {
            return Vec::new();
        };
        let Some(s) = p7.summary() else {
            return Vec::new();
        };
        let hash = s.hash_algo.map_or("unknown", |h| h.name());
        (s.signer, s.key_id, hash, s.signature)
    } else {
        (
            app.signer.to_vec(),
            app.key_id.to_vec(),
            PKEY_HASH[usize::from(app.hash)],
            app.sig.to_vec(),
        )
    };
    let f = |key: &str, value: Vec<u8>| Field {
        key: key.to_string(),
        value,
    };
    vec![
        f("sig_id", id.as_bytes().to_vec()),
        f("signer", signer),
        f("sig_key", kmod_hex(&key_id).into_bytes()),
        f("sig_hashalgo", hash.as_bytes().to_vec()),
        f("signature", kmod_hex(&sig).into_bytes()),
    ]
}

/// Parses the modinfo of a decompressed module image.
pub fn parse(image: &[u8]) -> Result<ModInfo, ModinfoParseError> {
    let section = elf::find_section(image, b".modinfo")?.ok_or(ModinfoParseError::NoModinfo)?;
    let mut fields: Vec<Field> = modinfo_strings(section)
        .into_iter()
        .map(|s| match s.iter().position(|&b| b == b'=') {
            Some(eq) => Field {
                key: String::from_utf8_lossy(&s[..eq]).into_owned(),
                value: s[eq + 1..].to_vec(),
            },
            None => Field {
                key: String::from_utf8_lossy(s).into_owned(),
                value: Vec::new(),
            },
        })
        .collect();
    fields.extend(signature_fields(image));
    Ok(ModInfo { fields })
}

/// Error of [`parse`] (without a path; [`read_modinfo`] adds it).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModinfoParseError {
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    #[error("no .modinfo section")]
    NoModinfo,
}

/// Reads a module file and parses its modinfo.
pub fn read_modinfo(path: &Path) -> Result<(ModuleFile, ModInfo), ModinfoError> {
    let file = read_module(path)?;
    let info = parse(&file.image).map_err(|e| match e {
        ModinfoParseError::Elf(source) => ModinfoError::ParseElf {
            path: path.to_path_buf(),
            source,
        },
        ModinfoParseError::NoModinfo => ModinfoError::ReadModinfo {
            path: path.to_path_buf(),
        },
    })?;
    Ok((file, info))
}

impl ModInfo {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|f| f.key == key)
            .map(Field::value_str)
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| f.key == key)
            .map(Field::value_str)
            .collect()
    }

    /// The module name (`name=`), as the kernel sees it.
    pub fn name(&self) -> Option<String> {
        self.get("name")
    }

    pub fn vermagic(&self) -> Option<String> {
        self.get("vermagic")
    }

    /// The modules this one depends on (`depends=a,b`).
    pub fn depends(&self) -> Vec<String> {
        self.get("depends")
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Parameters in kmod's print order (reverse order of first appearance).
    pub fn params(&self) -> Vec<Param> {
        let mut params: Vec<Param> = Vec::new();
        for f in &self.fields {
            let is_parm = f.key == "parm";
            if !is_parm && f.key != "parmtype" {
                continue;
            }
            let v = f.value_str();
            let Some((name, rest)) = v.split_once(':') else {
                continue;
            };
            let idx = match params.iter().position(|p| p.name == name) {
                Some(i) => i,
                None => {
                    params.push(Param {
                        name: name.to_string(),
                        description: None,
                        kind: None,
                    });
                    params.len() - 1
                }
            };
            if is_parm {
                params[idx].description = Some(rest.to_string());
            } else {
                params[idx].kind = Some(rest.to_string());
            }
        }
        params.reverse();
        params
    }

    /// Renders the output of `modinfo FILE`, byte for byte.
    pub fn render_text(&self, filename: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(format!("{:<16}{filename}\n", "filename:").as_bytes());
        for f in self
            .fields
            .iter()
            .filter(|f| f.key != "parm" && f.key != "parmtype")
        {
            // printf("%s:%-*s%s\n", key, 15 - keylen, "", value): a negative width pads just the same.
            let pad = 15usize.abs_diff(f.key.len());
            out.extend_from_slice(f.key.as_bytes());
            out.push(b':');
            out.extend(std::iter::repeat_n(b' ', pad));
            out.extend_from_slice(&f.value);
            out.push(b'\n');
        }
        // Parameter lines are printed from the raw entries, so collect them from bytes again.
        for p in self.params() {
            let line = match (&p.description, &p.kind) {
                (None, Some(t)) => format!("{:<16}{}:{t}\n", "parm:", p.name),
                (Some(d), Some(t)) => format!("{:<16}{}:{d} ({t})\n", "parm:", p.name),
                (Some(d), None) => format!("{:<16}{}:{d}\n", "parm:", p.name),
                (None, None) => continue,
            };
            out.extend_from_slice(line.as_bytes());
        }
        out
    }

    /// One JSON object: field name -> string, or a list for repeated fields and the fields that may repeat
    /// (`alias`, `parm`, `firmware`, `softdep`, `import_ns`). `parm` entries are merged like the text output;
    /// hex fields are unwrapped.
    pub fn to_json(&self, filename: &str) -> serde_json::Value {
        const LISTS: [&str; 5] = ["alias", "parm", "firmware", "softdep", "import_ns"];
        let mut map = serde_json::Map::new();
        map.insert("filename".into(), filename.into());
        for f in self
            .fields
            .iter()
            .filter(|f| f.key != "parm" && f.key != "parmtype")
        {
            let mut v = f.value_str();
            if f.key == "signature" || f.key == "sig_key" {
                v = v.replace("\n\t\t", "");
            }
            let repeated = LISTS.contains(&f.key.as_str())
                || self.fields.iter().filter(|g| g.key == f.key).count() > 1;
            if repeated {
                let entry = map
                    .entry(f.key.clone())
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let serde_json::Value::Array(a) = entry {
                    a.push(v.into());
                }
            } else {
                map.insert(f.key.clone(), v.into());
            }
        }
        let params: Vec<serde_json::Value> = self
            .params()
            .into_iter()
            .filter_map(|p| match (p.description, p.kind) {
                (None, Some(t)) => Some(format!("{}:{t}", p.name)),
                (Some(d), Some(t)) => Some(format!("{}:{d} ({t})", p.name)),
                (Some(d), None) => Some(format!("{}:{d}", p.name)),
                (None, None) => None,
            })
            .map(serde_json::Value::from)
            .collect();
        if !params.is_empty() {
            map.insert("parm".into(), params.into());
        }
        serde_json::Value::Object(map)
    }
}

/// The `filename:` kmod prints: the path made absolute against the current directory, not normalised.
pub fn display_filename(path: &Path) -> String {
    if path.is_absolute() {
        return path.display().to_string();
    }
    match std::env::current_dir() {
        Ok(cwd) => format!("{}/{}", cwd.display(), path.display()),
        Err(_) => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::elf::build_elf64;

    #[test]
    fn strings_split_like_kmod() {
        assert_eq!(
            modinfo_strings(b"\0\0a=1\0\0b=2\0"),
            vec![&b"a=1"[..], b"b=2"]
        );
        assert_eq!(modinfo_strings(b"a=1\0b"), vec![&b"a=1"[..], b"b"]);
        assert!(modinfo_strings(b"\0\0x").is_empty());
        assert!(modinfo_strings(b"").is_empty());
    }

    #[test]
    fn renders_fields_params_and_padding_like_kmod() {
        let section = b"parm=debug:Debug level\0parmtype=debug:int\0license=GPL\0parmtype=only:uint\0depends=\0\
a_very_long_key_name=v\0parm=nodesc_type:text\0name=demo\0noequals\0";
        let elf = build_elf64(&[(".modinfo", section)]);
        let info = parse(&elf).unwrap();
        let text = String::from_utf8(info.render_text("/m/demo.ko")).unwrap();
        let expected = "filename:       /m/demo.ko\n\
license:        GPL\n\
depends:        \n\
a_very_long_key_name:     v\n\
name:           demo\n\
noequals:       \n\
parm:           nodesc_type:text\n\
parm:           only:uint\n\
parm:           debug:Debug level (int)\n";
        assert_eq!(text, expected);
        assert_eq!(info.name().as_deref(), Some("demo"));
        assert!(info.depends().is_empty());
        let json = info.to_json("/m/demo.ko");
        assert_eq!(json["license"], "GPL");
        assert_eq!(json["parm"][2], "debug:Debug level (int)");
    }

    #[test]
    fn hex_wraps_every_twenty_bytes() {
        let b: Vec<u8> = (0..21).collect();
        let s = kmod_hex(&b);
        assert!(s.starts_with("00:01:02"));
        assert!(s.ends_with("12:13:\n\t\t14"));
        assert_eq!(kmod_hex(&b[..20]).matches('\n').count(), 0);
    }

    #[test]
    fn missing_section_is_an_error() {
        let elf = build_elf64(&[(".text", b"x")]);
        assert_eq!(parse(&elf), Err(ModinfoParseError::NoModinfo));
    }
}
