//! `kmm-loader image pull|sign|build`: argument definitions and dispatch. The registry flags are one clap
//! group flattened into every subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::auth::Credentials;
use super::build::{BuildRequest, build_image};
use super::extract::Limits;
use super::pull::{PullSpec, pull_tree};
use super::reference::ImageRef;
use super::registry::RegistryOptions;
use super::signing::{SignRequest, sign_image};

/// Registry access shared by pull, sign and build.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Registry access")]
pub struct RegistryArgs {
    /// Pull secret: a `.dockerconfigjson` file (the data of a kubernetes.io/dockerconfigjson Secret).
    #[arg(long, env = "KMM_PULL_SECRET")]
    pub pull_secret: Option<PathBuf>,
    /// Use plain HTTP (registryTLS.insecure).
    #[arg(long, env = "KMM_INSECURE")]
    pub insecure: bool,
    /// Do not verify the registry's TLS certificate (registryTLS.insecureSkipTLSVerify).
    #[arg(long, env = "KMM_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
    /// Extra CA bundle (PEM) to trust; repeatable.
    #[arg(long = "ca-file", env = "KMM_CA_FILE", value_delimiter = ',')]
    pub ca_files: Vec<PathBuf>,
    /// Registry mirror as SOURCE=MIRROR (host[:port][/path]); repeatable, tried in order, used for digest pulls.
    #[arg(long = "mirror", env = "KMM_MIRRORS", value_delimiter = ',', value_parser = parse_mirror)]
    pub mirrors: Vec<(String, String)>,
    /// Attempts per registry for transient failures.
    #[arg(long, env = "KMM_REGISTRY_ATTEMPTS", default_value_t = 4)]
    pub attempts: u32,
    /// First retry delay in milliseconds (doubles each attempt).
    #[arg(long, env = "KMM_REGISTRY_BACKOFF_MS", default_value_t = 500)]
    pub backoff_ms: u64,
}

fn parse_mirror(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_owned(), b.to_owned())),
        _ => Err(format!("expected SOURCE=MIRROR, got {s:?}")),
    }
}

impl RegistryArgs {
    /// The library options.
    pub fn options(&self) -> anyhow::Result<RegistryOptions> {
        let credentials = match &self.pull_secret {
            Some(p) => Credentials::from_file(p)?,
            None => Credentials::default(),
        };
        Ok(RegistryOptions {
            credentials,
            insecure: self.insecure,
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            ca_files: self.ca_files.clone(),
            mirrors: self.mirrors.clone(),
            attempts: self.attempts.max(1),
            backoff: Duration::from_millis(self.backoff_ms),
            ..RegistryOptions::default()
        })
    }
}

/// `kmm-loader image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull a kmod image and extract the modules of one kernel (and the firmware) into a directory; prints
    /// the manifest digest.
    Pull(PullArgs),
    /// Pull an unsigned kmod image, sign its modules (sha256, like sign-file) and push it with one added
    /// layer; prints the new manifest digest.
    Sign(SignArgs),
    /// Build an out-of-tree module against kernel headers, generate modules.dep, optionally sign, and push
    /// it as a kmod image (<dir>/lib/modules/<kernel>/); prints the manifest digest.
    Build(BuildArgs),
}

/// `image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Kernel headers directory (what /lib/modules/<kernel>/build points to).
    #[arg(long, env = "KMM_KERNEL_HEADERS")]
    pub kernel_headers: PathBuf,
    /// Module source directory (with its Kbuild/Makefile); built in a temporary copy.
    #[arg(long, env = "KMM_MODULE_SOURCE")]
    pub source: PathBuf,
    /// Destination image.
    #[arg(long, env = "KMM_IMAGE")]
    pub to: String,
    /// Kernel version (default: the release in the built modules' vermagic).
    #[arg(long, env = "KMM_KERNEL_VERSION")]
    pub kernel_version: Option<String>,
    /// Private key to sign the modules with (needs --sign-cert).
    #[arg(long, env = "KMM_SIGN_KEY", requires = "sign_cert")]
    pub sign_key: Option<PathBuf>,
    /// Certificate of --sign-key.
    #[arg(long, env = "KMM_SIGN_CERT", requires = "sign_key")]
    pub sign_cert: Option<PathBuf>,
    /// Directory in the image holding lib/modules (dirName).
    #[arg(long = "dir", env = "KMM_DIR_NAME", default_value = "/opt")]
    pub dir_name: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

async fn build(args: BuildArgs) -> anyhow::Result<String> {
    let req = BuildRequest {
        headers: args.kernel_headers,
        source: args.source,
        to: args.to.parse()?,
        kernel: args.kernel_version,
        sign: args.sign_key.zip(args.sign_cert),
        dir_name: args.dir_name,
    };
    let opts = args.registry.options()?;
    let built = build_image(&req, &opts).await?;
    tracing::info!(kernel = %built.kernel, modules = ?built.modules, "built and pushed");
    Ok(format!("{}\n", built.digest))
}

/// `image sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Private key (PEM or DER; KBUILD_SIGN_PIN for an encrypted one).
    #[arg(long, env = "KMM_SIGN_KEY")]
    pub key: PathBuf,
    /// Certificate of the key (PEM or DER).
    #[arg(long, env = "KMM_SIGN_CERT")]
    pub cert: PathBuf,
    /// Unsigned image (host[:port]/repo[:tag][@sha256:...]).
    #[arg(long, env = "KMM_UNSIGNED_IMAGE")]
    pub from: String,
    /// Destination of the signed image.
    #[arg(long, env = "KMM_SIGNED_IMAGE")]
    pub to: String,
    /// Image paths of the files to sign (filesToSign; globs, `*` stays within a directory); repeatable.
    /// Default: every module under --dir.
    #[arg(long = "files", env = "KMM_FILES_TO_SIGN", num_args = 1..)]
    pub files: Vec<String>,
    /// Directory in the image holding lib/modules (dirName).
    #[arg(long = "dir", env = "KMM_DIR_NAME", default_value = "/opt")]
    pub dir_name: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

async fn sign(args: SignArgs) -> anyhow::Result<String> {
    let req = SignRequest {
        from: args.from.parse()?,
        to: args.to.parse()?,
        key: args.key,
        cert: args.cert,
        files: args.files,
        dir_name: args.dir_name,
    };
    let opts = args.registry.options()?;
    let signed = sign_image(&req, &opts, Limits::default()).await?;
    Ok(format!("{}\n", signed.digest))
}

/// `image pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image: host[:port]/repo[:tag][@sha256:...] or oci:PATH[:TAG].
    #[arg(env = "KMM_IMAGE")]
    pub image: String,
    /// Kernel version whose <dir-name>/lib/modules/<V> is extracted.
    #[arg(long, env = "KMM_KERNEL_VERSION")]
    pub kernel_version: String,
    /// Output directory: receives lib/modules/<V>/ and firmware/ (replaced atomically).
    #[arg(long, env = "KMM_OUT")]
    pub out: PathBuf,
    /// Directory in the image holding lib/modules (the Module's dirName).
    #[arg(long, env = "KMM_DIR_NAME", default_value = "/opt")]
    pub dir_name: String,
    /// Firmware directory in the image (the Module's firmwarePath), extracted to <out>/firmware.
    #[arg(long, env = "KMM_FIRMWARE_PATH")]
    pub firmware_path: Option<String>,
    /// Largest file extracted, in bytes.
    #[arg(long, env = "KMM_MAX_FILE_SIZE", default_value_t = Limits::default().max_file_size)]
    pub max_file_size: u64,
    /// Largest total extracted, in bytes.
    #[arg(long, env = "KMM_MAX_TOTAL_SIZE", default_value_t = Limits::default().max_total_size)]
    pub max_total_size: u64,
    /// Most files extracted.
    #[arg(long, env = "KMM_MAX_FILES", default_value_t = Limits::default().max_files)]
    pub max_files: u64,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

async fn pull(args: PullArgs) -> anyhow::Result<String> {
    let image: ImageRef = args.image.parse()?;
    let opts = args.registry.options()?;
    let spec = PullSpec {
        image,
        kernel: args.kernel_version,
        dir_name: args.dir_name,
        firmware_path: args.firmware_path,
    };
    let limits = Limits {
        max_file_size: args.max_file_size,
        max_total_size: args.max_total_size,
        max_files: args.max_files,
        ..Limits::default()
    };
    let pulled = pull_tree(&spec, &args.out, &opts, limits).await?;
    if pulled.cached {
        tracing::info!(digest = %pulled.digest, out = %args.out.display(), "already present, nothing downloaded");
    }
    Ok(format!("{}\n", pulled.digest))
}

/// Executes an image subcommand and returns what it prints on stdout (the digest).
pub async fn execute(cmd: ImageCommand) -> anyhow::Result<String> {
    match cmd {
        ImageCommand::Pull(a) => pull(a).await,
        ImageCommand::Sign(a) => sign(a).await,
        ImageCommand::Build(a) => build(a).await,
    }
}

/// Runs an image subcommand on a fresh single-threaded tokio runtime: the requests, the socket reads and the
/// digest run on this thread, extraction and file writing on their own threads (spawn_blocking), so a pull
/// keeps one thread busy with its download instead of handing every chunk from a worker thread to this one.
pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    let out = rt.block_on(execute(cmd))?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
