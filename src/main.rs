//! The `bsk-sidecar` command: run, check, seal, open, keygen, demo, probe, portal-sim.

#![cfg_attr(
    not(test),
    deny(
        clippy::string_slice,
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use bsk_sidecar::clock::Clock;
use bsk_sidecar::config;
use bsk_sidecar::envelope::{self, aes::AesKey, jwt::JwtKey, BodyShape, Layer, PeerKeys, Stack};
use bsk_sidecar::metrics::Metrics;
use bsk_sidecar::runtime::Runtime;
use bsk_sidecar::secret::Secret;
use bsk_sidecar::server;

/// The allocator the features choose (`bsk_sidecar::allocator`), installed by this
/// binary: the library installs none, so no other feature swaps it out.
#[global_allocator]
static GLOBAL: bsk_sidecar::allocator::Chosen = bsk_sidecar::allocator::CHOSEN;

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
        /// Also resolve every DNS name, connect to every upstream and peer (TLS included),
        /// print certificate expiry and the clock's offset from each peer; one `ok`/`FAIL`
        /// line per item, exit 1 on any failure.
        #[arg(long)]
        online: bool,
    },
    /// Seal a JSON document read on stdin, as a peer would send it.
    Seal(EnvelopeArgs),
    /// Open a sealed message read on stdin and print the JSON inside.
    Open(EnvelopeArgs),
    /// Print a fresh AES key, IV, JWT secret and passcode.
    Keygen,
    /// See and act on the durable outbox (works on a running sidecar too, through its
    /// admin listener).
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Write the man pages and shell completions generated from these definitions into
    /// DIR/man and DIR/completions (run by packaging/build.sh).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run on an embedded config with a stand-in application and show sealed requests going through.
    Demo {
        /// Address of the demo's public listener.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: String,
        /// Send the sample requests, print what happened, and exit instead of serving.
        #[arg(long)]
        once: bool,
    },
    /// Check a counterparty's endpoint against the spec with a bounded series of requests
    /// (at most 100, at most 10 per second). Probe only endpoints you are authorised to test.
    Probe(ProbeArgs),
    /// A stand-in BSK portal to develop against: serves API-2 and API-6, keeps what it
    /// received for `GET /received`; `portal-sim call URL --api apiN` drives a department.
    PortalSim(PortalSimArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct PortalSimArgs {
    #[command(subcommand)]
    action: Option<PortalSimAction>,
    /// Address to serve on.
    #[arg(long, default_value = bsk_sidecar::portal_sim::DEFAULT_LISTEN)]
    listen: String,
    #[command(flatten)]
    keys: EnvelopeArgs,
}

#[derive(Subcommand)]
enum PortalSimAction {
    /// Send the spec's example request for --api to a department's URL, sealed, and check
    /// the opened answer against the spec's response table.
    Call {
        url: String,
        /// api1, api3, api4, api5 (api5a), api5b or api7.
        #[arg(long)]
        api: String,
        #[command(flatten)]
        keys: EnvelopeArgs,
        /// How long to wait for the answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

impl EnvelopeArgs {
    /// portal-sim's keys: layers (default `token,jwt`, the portal's stack), keys, and
    /// whether they are the embedded test keys (none given).
    fn resolve(&self) -> anyhow::Result<(Vec<Layer>, PeerKeys, bool)> {
        let layers = layers_of(self, "token,jwt")?;
        let embedded = self.config.is_none()
            && self.key.is_none()
            && self.iv.is_none()
            && self.jwt_secret.is_none()
            && self.passcode.is_none();
        let keys = if embedded {
            let mut k = bsk_sidecar::portal_sim::test_keys()?;
            k.agid = self.agid.clone();
            if let Some(j) = k.jwt.as_mut() {
                j.require_exp = self.require_exp;
            }
            k
        } else {
            keys_of(self)?
        };
        let problems = envelope::validate_stack(&layers, &keys);
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok((layers, keys, embedded))
    }

    fn shape(&self) -> BodyShape {
        match self.shape {
            ShapeArg::Form => BodyShape::Form,
            ShapeArg::Json => BodyShape::Json,
        }
    }
}

#[derive(Args)]
struct ProbeArgs {
    /// The endpoint: http:// or https://, with its path.
    url: String,
    #[command(flatten)]
    keys: EnvelopeArgs,
    /// Which example request to send: api1, api2, api3, api4, api5 (api5a), api5b, api6, api7.
    #[arg(long, default_value = "api1")]
    api: String,
    /// Requests per second, from 1 to 10.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// How long to wait for each answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Trust the certificates in this PEM file instead of the system's roots (https://).
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum OutboxAction {
    /// Queued and dead-lettered pushes (never their bodies).
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deliver push ID now: a dead letter goes back to its queue.
    Retry {
        #[arg(long, short)]
        config: PathBuf,
        id: u64,
    },
    /// Delete push ID (queued or dead) with its journal record.
    Drop {
        #[arg(long, short)]
        config: PathBuf,
        id: u64,
    },
}

#[derive(Args)]
struct EnvelopeArgs {
    /// Layers, outermost first: e.g. `aes`, `form,aes`, `token,jwt`, `bearer,jwt`
    /// [default: `aes`; for portal-sim `token,jwt`].
    #[arg(long, value_delimiter = ',')]
    envelope: Option<Vec<String>>,
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
    let default_level = if matches!(
        cli.command,
        Command::Demo { .. } | Command::Probe(_) | Command::PortalSim(_)
    ) {
        "warn"
    } else {
        "info"
    };
    // Held until `main` returns: dropping it writes out the lines still queued.
    let _log = init_logging(cli.log_format, default_level);
    install_panic_hook();
    let result = match cli.command {
        Command::Run { config } => return run(&config),
        Command::Check { config, online } => return check(&config, online),
        Command::Probe(a) => return probe(&a),
        Command::PortalSim(a) => return portal_sim(a),
        Command::Seal(a) => seal(&a),
        Command::Open(a) => open(&a),
        Command::Keygen => keygen(),
        Command::Outbox { action } => outbox(action),
        Command::GenerateDocs { out } => generate_docs(&out),
        Command::Demo { listen, once } => {
            tokio_main(async move { Ok(bsk_sidecar::demo::run(listen, once).await?) })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Man pages (one per visible subcommand, `bsk-sidecar-check.1` ...) and bash, zsh and
/// fish completions, from the clap definitions above: never written by hand.
fn generate_docs(out: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cmd = Cli::command();
    // Unbuilt, so that clap_mangen leaves out the `help` subcommand's pages.
    clap_mangen::generate_to(cmd, &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    // clap_complete offers hidden subcommands too: complete only the visible ones.
    let full = Cli::command();
    let mut cmd = clap::Command::new("bsk-sidecar")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd, "bsk-sidecar", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(())
}

/// Logs go to stderr off the request path: a request formats its line; a connection
/// worker gathers its lines and hands them on together when it has nothing left to run
/// (`logbatch`), any other thread hands on each line; one thread writes them out
/// (`logwrite`): a line after a pause at once, a busy sidecar's lines in one write every
/// 100 ms, or every 64 KiB when they come faster. Never lossy: if the writer falls 1 MiB behind, requests wait rather
/// than lines vanish. The stamp, the human format's fields and the JSON lines are written
/// by `logfmt`: the text of tracing-subscriber's formatters, for less CPU.
fn init_logging(format: LogFormat, default_level: &str) -> bsk_sidecar::logwrite::Guard {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let (writer, guard) = bsk_sidecar::logwrite::spawn(
        std::io::stderr(),
        bsk_sidecar::logwrite::Pace::default(),
        "bsk-sidecar-log",
    );
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let batched = bsk_sidecar::logbatch::Batched::new(writer);
    // The access lines of forwarded requests are written directly, into the same lines
    // (a clone of the writer gathers with it); a coloured human line is the formatter's.
    let json = matches!(format, LogFormat::Json);
    if json || !ansi {
        let direct = batched.clone();
        bsk_sidecar::logfmt::write_forwarded_lines(json, move |line| {
            use std::io::Write as _;
            use tracing_subscriber::fmt::MakeWriter as _;
            // As the subscriber does with a line it could not write.
            let _ = direct.make_writer().write_all(line);
        });
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(bsk_sidecar::logfmt::Timestamp)
        .with_writer(batched);
    match format {
        LogFormat::Human => builder
            .fmt_fields(bsk_sidecar::logfmt::Fields)
            .event_format(bsk_sidecar::logfmt::Human::default())
            .init(),
        LogFormat::Json => builder
            .json()
            .event_format(bsk_sidecar::logfmt::Json::default())
            .init(),
    }
    guard
}

/// A panic is a bug; its message may quote a payload. Log where it happened, as a log line
/// in the configured format, and never the message itself.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(target: "bsk_sidecar::panic", location = %at, "panic (a bug); its message is not logged because it may quote request data");
    }));
}

fn tokio_main<T, F: std::future::Future<Output = anyhow::Result<T>>>(f: F) -> anyhow::Result<T> {
    block_on(tokio::runtime::Builder::new_multi_thread(), f)
}

/// `run`'s runtime: accept loops, the admin listener, reloads, background and delivery
/// tasks. Connections are served on the connection workers (`bsk_sidecar::workers`), so
/// the main thread is enough here, and adds no allocator caches or wake-ups beside them.
fn control_main<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    block_on(tokio::runtime::Builder::new_current_thread(), f)
}

fn block_on<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    mut builder: tokio::runtime::Builder,
    f: F,
) -> anyhow::Result<T> {
    builder
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

/// Loads a config for a helper command: every problem joined into one error line.
fn load_quietly(path: &std::path::Path) -> anyhow::Result<config::Settings> {
    config::load(path).map_err(|errs| {
        anyhow!(errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; "))
    })
}

fn check(path: &std::path::Path, online: bool) -> ExitCode {
    match load_or_report(path) {
        Ok(settings) => {
            print!("{}", settings.describe());
            if let Some(mode) = bsk_sidecar::state_dir::too_open(&settings.state_dir) {
                println!(
                    "warning: state.dir {} is mode {mode:o}, wider than 0700: others can list the outbox and replay files; chmod 0700 it",
                    settings.state_dir.display()
                );
            }
            println!("{}: OK", path.display());
            if online {
                return check_online(&settings);
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn check_online(settings: &config::Settings) -> ExitCode {
    let findings = match tokio_main(async {
        Ok(bsk_sidecar::online::probe(settings, &Clock::system()).await)
    }) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for f in &findings {
        println!("{f}");
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed > 0 {
        println!("online: {failed} of {} failed", findings.len());
        ExitCode::FAILURE
    } else {
        println!("online: all {} ok", findings.len());
        ExitCode::SUCCESS
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let settings = match load_or_report(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(mode) = bsk_sidecar::state_dir::too_open(&settings.state_dir) {
        tracing::warn!(dir = %settings.state_dir.display(), mode = format!("{mode:o}"), "state.dir is wider than 0700; chmod 0700 it");
    }
    let config_path = path.to_path_buf();
    let result = control_main(async move {
        let shutdown = shutdown_signal().context("installing signal handlers")?;
        // SIGHUP re-reads the config; installed before systemd hears READY.
        let sighup = bsk_sidecar::reload::on_sighup(config_path).context("installing SIGHUP")?;
        for w in settings.relaxations() {
            tracing::warn!("{w}");
        }
        let rt = Runtime::new(settings, Metrics::new())?;
        let bound = server::bind(&rt).await?;
        let live = bsk_sidecar::reload::Live::new(rt);
        let reloader = sighup.start(live.clone());
        server::serve_live(live, bound, shutdown).await;
        reloader.abort();
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

/// SIGTERM or SIGINT: stop accepting and drain. The handlers are installed when this
/// is called (before the listeners bind), so a signal that arrives during start-up is
/// not lost to the default action.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// The `--envelope` layers, or the command's `default` stack when none are given.
fn layers_of(a: &EnvelopeArgs, default: &str) -> anyhow::Result<Vec<Layer>> {
    let given = a.envelope.as_deref().filter(|e| !e.is_empty());
    let names: Vec<&str> = match given {
        Some(e) => e.iter().map(String::as_str).collect(),
        None => default.split(',').collect(),
    };
    names
        .into_iter()
        .map(|l| {
            Layer::parse(l.trim()).ok_or_else(|| {
                anyhow!("`{l}` is not a layer (form, aes, token, bearer, jwt, passcode)")
            })
        })
        .collect()
}

fn keys_of(a: &EnvelopeArgs) -> anyhow::Result<PeerKeys> {
    if let Some(path) = &a.config {
        let name = a.peer.as_deref().unwrap_or_default();
        let settings = load_quietly(path)?;
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

fn prepare(a: &EnvelopeArgs) -> anyhow::Result<(Stack, PeerKeys, Vec<u8>)> {
    let layers = layers_of(a, "aes")?;
    let keys = keys_of(a)?;
    let problems = envelope::validate_stack(&layers, &keys);
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let layers = Stack::new(&layers).map_err(|problems| anyhow!("{}", problems.join("; ")))?;
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
    // A bearer message is what `seal` prints: an `Authorization:` line (or a bare token),
    // then the body, if any, on the following lines.
    let (authorization, body) = if layers.first() == Some(&Layer::Bearer) {
        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        let t = first.trim();
        let t = t.strip_prefix("Authorization:").unwrap_or(t).trim();
        let auth = if t.len() > 7
            && t.get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
        {
            t.to_string()
        } else {
            format!("Bearer {t}")
        };
        (Some(auth), rest.trim().as_bytes())
    } else {
        (None, body)
    };
    let now = Clock::system().unix_secs();
    let req = envelope::Incoming {
        content_type: None,
        authorization: authorization.as_deref(),
        passcode_header: None,
        body,
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
    b.get(start..end).unwrap_or_default()
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
                if let Some(&c) = alphabet.get(b as usize % alphabet.len()) {
                    out.push(c as char);
                }
            }
        }
    }
    Ok(out)
}

/// `probe`: exit 0 when no check failed, 1 when one did or the probe could not run.
fn probe(a: &ProbeArgs) -> ExitCode {
    let run = || -> anyhow::Result<bool> {
        let layers = layers_of(&a.keys, "aes")?;
        let keys = keys_of(&a.keys)?;
        let problems = envelope::validate_stack(&layers, &keys);
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let sample = bsk_sidecar::probe::samples::Sample::parse(&a.api).ok_or_else(|| {
            anyhow!(
                "--api {}: not one of {}",
                a.api,
                bsk_sidecar::probe::samples::Sample::NAMES
            )
        })?;
        let ca = match &a.ca {
            Some(path) => Some(bsk_sidecar::tls::read_certs(path).map_err(|e| anyhow!("{e}"))?),
            None => None,
        };
        let opts = bsk_sidecar::probe::Options {
            clock: Clock::system(),
            url: a.url.clone(),
            layers,
            keys,
            sample,
            shape: match a.keys.shape {
                ShapeArg::Form => BodyShape::Form,
                ShapeArg::Json => BodyShape::Json,
            },
            rate: a.rate,
            timeout: a.timeout,
            ca,
        };
        let report = tokio_main(async { Ok(bsk_sidecar::probe::run(opts).await?) })?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.text());
        }
        Ok(report.passed())
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `portal-sim`: serve until interrupted; `portal-sim call`: exit 0 only for a 2xx answer
/// that matches the response table.
fn portal_sim(a: PortalSimArgs) -> ExitCode {
    use bsk_sidecar::portal_sim;
    let result = match a.action {
        Some(PortalSimAction::Call {
            url,
            api,
            keys,
            timeout,
        }) => (|| -> anyhow::Result<bool> {
            let (layers, peer_keys, _) = keys.resolve()?;
            let sample = bsk_sidecar::probe::samples::Sample::parse(&api)
                .ok_or_else(|| anyhow!("--api {api}: not an API name"))?;
            let outcome = tokio_main(async {
                Ok(portal_sim::call(
                    &url,
                    sample,
                    &layers,
                    &peer_keys,
                    keys.shape(),
                    timeout,
                    &Clock::system(),
                )
                .await?)
            })?;
            print!("{}", outcome.text);
            Ok(outcome.matches)
        })(),
        None => (|| -> anyhow::Result<bool> {
            let (layers, keys, embedded) = a.keys.resolve()?;
            let stack = layers
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(",");
            tokio_main(async {
                let running = portal_sim::start(&a.listen, layers, keys, Clock::system()).await?;
                println!(
                    "bsk-sidecar portal-sim: a stand-in BSK portal on http://{}",
                    running.addr
                );
                println!("  POST /push       API-2 draft/final submission");
                println!("  POST /deo/auth   API-6 operator (DEO) authentication");
                println!("  GET  /received   every call so far, as JSON");
                println!("layers: [{stack}]");
                if embedded {
                    println!("test keys (embedded, for development only):");
                    println!("  agId: {}", a.keys.agid);
                    println!("  passcode: {}", portal_sim::TEST_PASSCODE);
                    println!("  jwt_secret: {}", portal_sim::TEST_JWT_SECRET);
                    println!(
                        "  aes_key: {}  aes_iv: {}",
                        portal_sim::TEST_AES_KEY,
                        portal_sim::TEST_AES_IV
                    );
                } else {
                    println!("keys: as given (not shown)");
                }
                tokio::select! {
                    _ = running.wait() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
                Ok(true)
            })
        })(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

/// `outbox list|retry|drop`: on the store directly, or — while a sidecar holds it —
/// through that sidecar's admin listener. With `state.backend.postgres`, always directly:
/// PostgreSQL serves every replica and this command at once.
fn outbox(action: OutboxAction) -> anyhow::Result<()> {
    use bsk_sidecar::egress::{outbox::Store, outbox::StoreError, pg::PgStore, store::Outbox};
    let path = match &action {
        OutboxAction::List { config, .. }
        | OutboxAction::Retry { config, .. }
        | OutboxAction::Drop { config, .. } => config,
    };
    let settings = load_quietly(path)?;
    if let Some(pg) = &settings.postgres {
        let store = Outbox::Postgres(std::sync::Arc::new(PgStore::open(pg)?));
        return tokio_main(outbox_on(store, action));
    }
    let store = match Store::open(&settings.state_dir) {
        Ok(s) => Some(s),
        Err(StoreError::Locked { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(store) = store else {
        let admin = settings.admin.ok_or_else(|| {
            anyhow!("the outbox is in use by a running sidecar whose admin listener is off; stop it or enable admin.listen")
        })?;
        if admin.port() == 0 {
            bail!("the outbox is in use by a running sidecar, and admin.listen uses port 0 so its admin listener cannot be found; give it a fixed port");
        }
        let token = settings.admin_access.token.clone();
        return tokio_main(outbox_via_admin(admin, token, action));
    };
    tokio_main(outbox_on(Outbox::Embedded(store), action))
}

/// `outbox` on a store this process opened.
async fn outbox_on(
    store: bsk_sidecar::egress::store::Outbox,
    action: OutboxAction,
) -> anyhow::Result<()> {
    use bsk_sidecar::egress::ops;
    match action {
        OutboxAction::List { json, .. } => {
            let v = ops::list(&store, &Clock::system()).await?;
            if json {
                println!("{v}");
            } else {
                print!("{}", ops::render(&v));
            }
        }
        OutboxAction::Retry { id, .. } => match ops::retry(&store, id, &Clock::system()).await? {
            Some(peer) => println!("push {id} for {peer} is due now"),
            None => bail!("no push with id {id}"),
        },
        OutboxAction::Drop { id, .. } => {
            if !ops::drop_push(&store, id).await? {
                bail!("no push with id {id}");
            }
            println!("push {id} dropped");
        }
    }
    Ok(())
}

async fn outbox_via_admin(
    admin: std::net::SocketAddr,
    token: Option<Secret>,
    action: OutboxAction,
) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Empty};
    let (method, path, id) = match &action {
        OutboxAction::List { .. } => (http::Method::GET, "/outbox".to_string(), 0),
        OutboxAction::Retry { id, .. } => (http::Method::POST, format!("/outbox/{id}/retry"), *id),
        OutboxAction::Drop { id, .. } => (http::Method::POST, format!("/outbox/{id}/drop"), *id),
    };
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("the outbox is in use; reaching the sidecar's admin listener on {admin}")
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, admin.to_string());
    if let Some(t) = &token {
        let value = [b"Bearer ".as_slice(), t.expose()].concat();
        let mut value = http::HeaderValue::from_bytes(&value)
            .map_err(|_| anyhow!("admin.token holds characters an HTTP header cannot carry"))?;
        value.set_sensitive(true);
        req = req.header(http::header::AUTHORIZATION, value);
    }
    let req = req.body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status == http::StatusCode::NOT_FOUND && id != 0 {
        bail!("no push with id {id}");
    }
    if !status.is_success() {
        bail!(
            "admin listener answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    match action {
        OutboxAction::List { json, .. } => {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            if json {
                println!("{v}");
            } else {
                print!("{}", bsk_sidecar::egress::ops::render(&v));
            }
        }
        OutboxAction::Retry { id, .. } => println!("push {id} is due now"),
        OutboxAction::Drop { id, .. } => println!("push {id} dropped"),
    }
    Ok(())
}
