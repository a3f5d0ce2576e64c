//! The `kmm-loader` command line: argument definitions and dispatch to the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::keys::{self, TrustStore};
use crate::modinfo;
use crate::modprobe::{self, HostPaths, LoadRequest};
use crate::sign::Signer;
use crate::signature::{self, HashAlgo};

/// Inspect, verify, sign, load and unload Linux kernel modules.
#[derive(Debug, Parser)]
#[command(name = "kmm-loader", version)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging options.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "KMM_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "KMM_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Where the host's `/sys`, `/proc`, `/lib/modules` and `/lib/firmware` are.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Root of the host file system (sys, proc, lib/modules, lib/firmware resolve under it).
    #[arg(long, env = "KMM_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the .modinfo fields and signature facts of modules, like kmod's modinfo.
    Modinfo {
        /// Print one JSON object per module instead.
        #[arg(long, env = "KMM_JSON")]
        json: bool,
        /// Module files (.ko, .ko.xz, .ko.zst, .ko.gz).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Verify appended module signatures against X.509 certificates; exit 0 only if all verify.
    Verify {
        /// Trusted certificate (DER or PEM; repeatable).
        #[arg(
            long = "cert",
            env = "KMM_CERT",
            value_delimiter = ',',
            required = true
        )]
        certs: Vec<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Sign modules like scripts/sign-file (replacing existing signatures).
    Sign {
        /// PEM private key (encrypted PKCS#8 keys take their passphrase from KBUILD_SIGN_PIN).
        #[arg(long, env = "KMM_SIGN_KEY")]
        key: PathBuf,
        /// X.509 certificate of the key (DER or PEM).
        #[arg(long, env = "KMM_SIGN_CERT")]
        cert: PathBuf,
        /// Digest algorithm.
        #[arg(long, env = "KMM_SIGN_HASH", default_value = "sha256", value_parser = ["sha256", "sha384", "sha512"])]
        hash: String,
        /// Write the signed module here instead of in place (only with one FILE).
        #[arg(long, env = "KMM_SIGN_OUTPUT")]
        output: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Extract the kernel's built-in module signing certificate from a kernel image (vmlinux or vmlinuz).
    ExtractCert {
        /// Kernel image.
        #[arg(long, env = "KMM_KERNEL_IMAGE")]
        kernel: PathBuf,
        /// Subject CN to look for.
        #[arg(long, env = "KMM_CERT_CN", default_value = keys::KERNEL_KEY_CN)]
        cn: String,
        /// Write the first certificate as DER to this file instead of printing PEM.
        #[arg(long, env = "KMM_CERT_OUTPUT")]
        output: Option<PathBuf>,
    },
    /// Load a module with its dependencies and softdeps, with modprobe semantics over finit_module.
    Load(LoadArgs),
    /// Unload a module like modprobe -r, with its softdeps and the dependencies it leaves unused; never forces.
    Unload(UnloadArgs),
    /// Wait until /sys/module/NAME exists (and has the given version).
    Wait {
        #[arg(long, env = "KMM_MODULE")]
        module: String,
        #[arg(long, env = "KMM_MODULE_VERSION")]
        version: Option<String>,
        /// How long to wait, e.g. 30s, 5m, 500ms.
        #[arg(long, env = "KMM_TIMEOUT", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Pull, sign and build kmod images against a registry, without a container engine.
    #[command(subcommand)]
    Image(crate::image::cli::ImageCommand),
}

/// Arguments of `load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Directory holding lib/modules/<kernel>/ (the kmod image's dirName).
    #[arg(long, env = "KMM_DIR")]
    pub dir: PathBuf,
    /// Kernel version (default: the running kernel).
    #[arg(long, env = "KMM_KERNEL_VERSION")]
    pub kernel_version: Option<String>,
    /// Module parameter for MODULE (repeatable).
    #[arg(long = "param", env = "KMM_PARAM", value_delimiter = ' ')]
    pub params: Vec<String>,
    /// modulesLoadingOrder: the listed modules load in reverse order, ending with the first (softdep lines
    /// `softdep a pre: b` like upstream's softdep.conf; a module's own softdep takes precedence, as in modprobe).
    #[arg(long, env = "KMM_ORDER", value_delimiter = ',')]
    pub order: Vec<String>,
    /// In-tree modules to unload first, like modprobe -r (with the dependencies they leave unused); refused if
    /// one is in use.
    #[arg(long, env = "KMM_REMOVE_IN_TREE", value_delimiter = ',')]
    pub remove_in_tree: Vec<String>,
    /// Firmware directory to copy from.
    #[arg(long, env = "KMM_FIRMWARE_FROM", requires = "firmware_to")]
    pub firmware_from: Option<PathBuf>,
    /// Host firmware directory to copy to (also written to firmware_class.path).
    #[arg(long, env = "KMM_FIRMWARE_TO", requires = "firmware_from")]
    pub firmware_to: Option<PathBuf>,
    /// Verify every module against these certificates before it reaches the kernel (repeatable).
    #[arg(
        long = "require-signature",
        env = "KMM_REQUIRE_SIGNATURE",
        value_delimiter = ','
    )]
    pub require_signature: Vec<PathBuf>,
    #[command(flatten)]
    pub host: HostArgs,
    /// The module to load.
    pub module: String,
}

/// Arguments of `unload`.
#[derive(Debug, Args)]
pub struct UnloadArgs {
    /// Directory holding lib/modules/<kernel>/ (for dependencies); without it /proc/modules holders are used.
    #[arg(long, env = "KMM_DIR")]
    pub dir: Option<PathBuf>,
    #[arg(long, env = "KMM_KERNEL_VERSION")]
    pub kernel_version: Option<String>,
    /// modulesLoadingOrder: unload all listed modules (first one first).
    #[arg(long, env = "KMM_ORDER", value_delimiter = ',')]
    pub order: Vec<String>,
    #[command(flatten)]
    pub host: HostArgs,
    pub module: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration '{s}'"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in '{s}' (use ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match log.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kmm-loader: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; `Ok(FAILURE)` means some files failed and were reported already.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Image(cmd) => crate::image::cli::run(cmd),
        Command::Modinfo { json, files } => cmd_modinfo(json, &files),
        Command::Verify { certs, files } => cmd_verify(&certs, &files),
        Command::Sign {
            key,
            cert,
            hash,
            output,
            files,
        } => cmd_sign(&key, &cert, &hash, output, &files),
        Command::ExtractCert { kernel, cn, output } => cmd_extract_cert(&kernel, &cn, output),
        Command::Load(args) => {
            let req = LoadRequest {
                dir: args.dir,
                kernel_version: args.kernel_version,
                params: args.params,
                order: args.order,
                remove_in_tree: args.remove_in_tree,
                firmware: args.firmware_from.zip(args.firmware_to),
                require_signature: args.require_signature,
                module: args.module,
            };
            let report = modprobe::load(&HostPaths::new(&args.host.host_root), &req)?;
            for line in report {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Unload(args) => {
            let host = HostPaths::new(&args.host.host_root);
            let report = modprobe::unload(
                &host,
                args.dir.as_deref(),
                args.kernel_version.as_deref(),
                &args.order,
                &args.module,
            )?;
            for line in report {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait {
            module,
            version,
            timeout,
            host,
        } => {
            modprobe::wait(
                &HostPaths::new(&host.host_root),
                &module,
                version.as_deref(),
                timeout,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_modinfo(json: bool, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut code = ExitCode::SUCCESS;
    for f in files {
        match modinfo::read_modinfo(f) {
            Ok((_, info)) => {
                let name = modinfo::display_filename(f);
                if json {
                    writeln!(out, "{}", info.to_json(&name))?;
                } else {
                    out.write_all(&info.render_text(&name))?;
                }
            }
            Err(e) => {
                eprintln!(
                    "kmm-loader: {}",
                    anyhow::Error::from(e)
                        .chain()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ")
                );
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

fn cmd_verify(certs: &[PathBuf], files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let store = TrustStore::load(certs)?;
    let threads = crate::par::threads();
    let mut failed = 0usize;
    for (f, res) in files
        .iter()
        .zip(signature::verify_files(files, &store, threads))
    {
        match res {
            Ok(v) => {
                tracing::debug!(file = %f.display(), signer = %v.signer, hash = v.hash.name(), "verified")
            }
            Err(e) => {
                failed += 1;
                let reason = anyhow::Error::from(e)
                    .chain()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(": ");
                println!("{}: {reason}", f.display());
            }
        }
    }
    tracing::info!(verified = files.len() - failed, failed, "verify done");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_sign(
    key: &std::path::Path,
    cert: &std::path::Path,
    hash: &str,
    output: Option<PathBuf>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    if output.is_some() && files.len() != 1 {
        bail!("--output needs exactly one FILE");
    }
    let hash = HashAlgo::from_name(hash).with_context(|| format!("unknown hash {hash}"))?;
    let pin = std::env::var(keys::PIN_ENV).ok();
    let key_pair = keys::load_private_key(key, pin.as_deref())?;
    let certificate = keys::load_certificates(cert)?
        .into_iter()
        .next()
        .context("no certificate")?;
    keys::check_key_pair(&key_pair, &certificate, key, cert)?;
    let signer = Signer {
        key: key_pair,
        cert: certificate,
        hash,
    };
    // Each file is signed and written atomically on its own, so the files are spread over the cores; every
    // failure is reported, not only the first.
    let results = signer.sign_files(files, output.as_deref(), crate::par::threads());
    let mut failed = 0;
    for (f, r) in files.iter().zip(results) {
        if let Err(e) = r {
            failed += 1;
            eprintln!("{}: {:#}", f.display(), anyhow::Error::new(e));
        }
    }
    if failed > 0 {
        bail!("{failed} of {} modules were not signed", files.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_extract_cert(
    kernel: &std::path::Path,
    cn: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let image =
        std::fs::read(kernel).with_context(|| format!("failed to read {}", kernel.display()))?;
    let certs = keys::extract_kernel_certificates(&image, cn);
    let Some(first) = certs.first() else {
        bail!(
            "no certificate with CN '{cn}' found in {}",
            kernel.display()
        );
    };
    match output {
        Some(path) => std::fs::write(&path, &first.der)
            .with_context(|| format!("failed to write {}", path.display()))?,
        None => {
            for c in &certs {
                print!("{}", c.to_pem());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
