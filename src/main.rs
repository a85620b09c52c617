//! The `bsk-sidecar` command: run, check, seal, open, keygen, demo.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use bsk_sidecar::config;
use bsk_sidecar::envelope::{self, aes::AesKey, jwt::JwtKey, BodyShape, Layer, PeerKeys};
use bsk_sidecar::metrics::Metrics;
use bsk_sidecar::runtime::Runtime;
use bsk_sidecar::secret::Secret;
use bsk_sidecar::server;

/// Exit status for a configuration the sidecar refuses (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "bsk-sidecar",
    version,
    about = "Security sidecar for the BSK API Integration spec"
)]
struct Cli {
    /// Log lines as human-readable text or JSON (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print the effective routes.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Seal a JSON document read on stdin, as a peer would send it.
    Seal(EnvelopeArgs),
    /// Open a sealed message read on stdin and print the JSON inside.
    Open(EnvelopeArgs),
    /// Print a fresh AES key, IV, JWT secret and passcode.
    Keygen,
    /// Run on an embedded config with a stand-in application and show sealed requests going through.
    Demo {
        /// Address of the demo's public listener.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: String,
        /// Send the sample requests, print what happened, and exit instead of serving.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Args)]
struct EnvelopeArgs {
    /// Layers, outermost first: e.g. `aes`, `form,aes`, `token,jwt`, `bearer,jwt`.
    #[arg(long, default_value = "aes", value_delimiter = ',')]
    envelope: Vec<String>,
    /// Take the keys of `--peer` from this config file.
    #[arg(long, requires = "peer")]
    config: Option<PathBuf>,
    /// Peer name in `--config`.
    #[arg(long)]
    peer: Option<String>,
    /// AES-256 key: the 32 characters as the peer writes them.
    #[arg(long)]
    key: Option<String>,
    /// AES IV: 16 characters.
    #[arg(long)]
    iv: Option<String>,
    /// HMAC secret for the JWT layer.
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Passcode for the token layer.
    #[arg(long)]
    passcode: Option<String>,
    /// agId for the form layer.
    #[arg(long, default_value = "BSK")]
    agid: String,
    /// Form layer output as a urlencoded body (`form`) or a JSON object (`json`).
    #[arg(long, value_enum, default_value_t = ShapeArg::Form)]
    shape: ShapeArg,
    /// When opening, refuse tokens without `exp` (the sidecar's own default).
    #[arg(long)]
    require_exp: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ShapeArg {
    Form,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story on stdout; only warnings go to the log.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_level);
    let result = match cli.command {
        Command::Run { config } => return run(&config),
        Command::Check { config } => return check(&config),
        Command::Seal(a) => seal(&a),
        Command::Open(a) => open(&a),
        Command::Keygen => keygen(),
        Command::Demo { listen, once } => tokio_main(bsk_sidecar::demo::run(listen, once)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn tokio_main<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

fn load_or_report(path: &std::path::Path) -> Result<config::Settings, ExitCode> {
    config::load(path).map_err(|errs| {
        for e in &errs {
            eprintln!("{e}");
        }
        eprintln!(
            "{}: {} problem(s); nothing started",
            path.display(),
            errs.len()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    match load_or_report(path) {
        Ok(settings) => {
            print!("{}", settings.describe());
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let settings = match load_or_report(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = tokio_main(async move {
        let rt = Runtime::new(settings, Metrics::new())?;
        let bound = server::bind(&rt).await?;
        server::serve(rt, bound, shutdown_signal()).await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM or SIGINT: stop accepting and drain.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn layers_of(a: &EnvelopeArgs) -> anyhow::Result<Vec<Layer>> {
    a.envelope
        .iter()
        .map(|l| {
            Layer::parse(l.trim())
                .ok_or_else(|| anyhow!("`{l}` is not a layer (form, aes, token, bearer, jwt)"))
        })
        .collect()
}

fn keys_of(a: &EnvelopeArgs) -> anyhow::Result<PeerKeys> {
    if let Some(path) = &a.config {
        let name = a.peer.as_deref().unwrap_or_default();
        let settings = config::load(path).map_err(|errs| {
            anyhow!(errs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "))
        })?;
        let peer = settings
            .peers
            .get(name)
            .ok_or_else(|| anyhow!("no peer named `{name}` in {}", path.display()))?;
        return Ok(peer.keys.clone());
    }
    let aes = match (&a.key, &a.iv) {
        (Some(k), Some(iv)) => {
            vec![AesKey::new(k.as_bytes(), iv.as_bytes()).map_err(|e| anyhow!(e))?]
        }
        (None, None) => Vec::new(),
        _ => bail!("--key and --iv go together"),
    };
    let jwt = a.jwt_secret.as_ref().map(|s| {
        let mut k = JwtKey::new(Secret::new(s.as_bytes().to_vec()));
        k.require_exp = a.require_exp;
        k
    });
    Ok(PeerKeys {
        agid: a.agid.clone(),
        passcode: a
            .passcode
            .as_ref()
            .map(|p| Secret::new(p.as_bytes().to_vec())),
        jwt,
        aes,
    })
}

fn prepare(a: &EnvelopeArgs) -> anyhow::Result<(Vec<Layer>, PeerKeys, Vec<u8>)> {
    let layers = layers_of(a)?;
    let keys = keys_of(a)?;
    let problems = envelope::validate_stack(&layers, &keys);
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    Ok((layers, keys, input))
}

fn seal(a: &EnvelopeArgs) -> anyhow::Result<()> {
    let (layers, keys, input) = prepare(a)?;
    let plain = trim_ascii(&input);
    serde_json::from_slice::<serde::de::IgnoredAny>(plain)
        .context("stdin is not a JSON document")?;
    let shape = match a.shape {
        ShapeArg::Form => BodyShape::Form,
        ShapeArg::Json => BodyShape::Json,
    };
    let sealed = envelope::seal(&layers, &keys, plain, shape).map_err(|e| anyhow!("{e}"))?;
    let mut out = std::io::stdout().lock();
    if let Some(auth) = &sealed.authorization {
        writeln!(out, "Authorization: {auth}")?;
    }
    out.write_all(&sealed.body)?;
    if !sealed.body.is_empty() {
        writeln!(out)?;
    }
    Ok(())
}

fn open(a: &EnvelopeArgs) -> anyhow::Result<()> {
    let (layers, keys, input) = prepare(a)?;
    let body = trim_ascii(&input);
    let text = std::str::from_utf8(body).unwrap_or_default();
    let authorization = if layers.first() == Some(&Layer::Bearer) {
        let t = text.strip_prefix("Authorization:").unwrap_or(text).trim();
        Some(if t.len() > 7 && t[..7].eq_ignore_ascii_case("bearer ") {
            t.to_string()
        } else {
            format!("Bearer {t}")
        })
    } else {
        None
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let req = envelope::Incoming {
        content_type: None,
        authorization: authorization.as_deref(),
        passcode_header: None,
        body: if authorization.is_some() { b"" } else { body },
    };
    let opened =
        envelope::open(&layers, &keys, &req, now).map_err(|e| anyhow!("{e} ({})", e.reason()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&opened.plain)?;
    writeln!(out)?;
    Ok(())
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Uniformly random characters from `alphabet`, by rejection sampling.
fn random_string(alphabet: &[u8], len: usize) -> anyhow::Result<String> {
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::getrandom(&mut buf).map_err(|e| anyhow!("no randomness from the OS: {e}"))?;
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    Ok(out)
}

fn keygen() -> anyhow::Result<()> {
    const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // Key and IV in the spec's own style (printable, as every peer's sample code expects).
    println!("aes_key: {}", random_string(UPPER_DIGITS, 32)?);
    println!("aes_iv: {}", random_string(UPPER_DIGITS, 16)?);
    println!("jwt_secret: {}", random_string(ALNUM, 48)?);
    println!("passcode: {}", random_string(ALNUM, 20)?);
    Ok(())
}
