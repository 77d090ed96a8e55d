//! The `whosin` command line: parse arguments, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use whosin::config::HumanDuration;
use whosin::simulate::{self, WireFormat};

/// Who is logged in to Qlik Sense, live and after the fact.
#[derive(Parser)]
#[command(name = "whosin", version, about)]
struct Cli {
    /// Configuration file [default: config/whosin.yaml, or the built-in
    /// defaults when that file does not exist].
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration: exit 0, or 2 with every problem by key path.
    CheckConfig,
    /// Who is (or was, with --at) logged in, from a running daemon.
    Who {
        /// The instant to ask about (RFC 3339, e.g. 2026-11-21T10:42:00Z); default now.
        #[arg(long)]
        at: Option<String>,
        /// Only this Qlik node.
        #[arg(long)]
        host: Option<String>,
        /// Only this user, written DIRECTORY\userid.
        #[arg(long)]
        user: Option<String>,
        /// Only sessions in this app: its id or its name, in any case.
        #[arg(long)]
        app: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = whosin::who::Format::Table)]
        format: whosin::who::Format,
        /// The daemon's base URL [default: from http.listen in the config, else http://127.0.0.1:9842].
        #[arg(long)]
        server: Option<String>,
        /// Bearer token [default: $WHOSIN_TOKEN, else http.auth_token from the config].
        #[arg(long)]
        token: Option<String>,
        /// Table order.
        #[arg(long, value_enum, default_value_t = whosin::who::Sort::Host)]
        sort: whosin::who::Sort,
        /// PEM file of CA certificates to trust, besides the system's, for a daemon with http.tls.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
    },
    /// The Qlik proxy service's own sessions: list them, end them (needs `qlik:`).
    Sessions {
        #[command(subcommand)]
        command: SessionsCmd,
    },
    /// Write a whosin config from a Butler SOS config (Butler-SOS.*.yaml).
    ImportButlerSos {
        /// The Butler SOS config file.
        file: PathBuf,
        /// Write the whosin config here (with the secrets) instead of printing
        /// it (with ${NAME} references in place of the secrets).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Send realistic Qlik proxy traffic to a whosin (or Butler SOS).
    Simulate {
        /// Where to send the datagrams.
        #[arg(long, default_value = "127.0.0.1:9997")]
        target: String,
        /// Distinct users.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Qlik nodes.
        #[arg(long, default_value_t = 2)]
        hosts: usize,
        /// Datagrams per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// How long to send, e.g. 30s or 5m.
        #[arg(long, default_value = "30s")]
        duration: HumanDuration,
        /// Wire format.
        #[arg(long, value_enum, default_value_t = WireFormat::Legacy)]
        format: WireFormat,
        /// Seed for repeatable traffic.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write a JSON report (what was sent, what whosin should show) to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Lose this share of the datagrams (0 to 1, e.g. 0.01), chosen by the seed.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
    },
}

#[derive(Subcommand)]
enum SessionsCmd {
    /// List the sessions the proxies hold (like Ctrl-Q's session-get).
    List {
        /// Only this proxy (its host, first DNS label or node_name).
        #[arg(long)]
        host: Option<String>,
        /// Only these virtual proxies ("" is the default one) [default: those in the config].
        #[arg(long = "virtual-proxy")]
        virtual_proxy: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = whosin::qlik::cli::Format::Table)]
        format: whosin::qlik::cli::Format,
        /// Table order.
        #[arg(long, value_enum, default_value_t = whosin::qlik::cli::Sort::Host)]
        sort: whosin::qlik::cli::Sort,
    },
    /// End sessions (like Ctrl-Q's session-delete): by id, by user, or all on
    /// a virtual proxy after a confirmation.
    End {
        /// The proxy.
        #[arg(long)]
        host: String,
        /// The virtual proxy ("" is the default one).
        #[arg(long = "virtual-proxy")]
        virtual_proxy: String,
        /// A session id to end (repeatable).
        #[arg(long = "session-id", conflicts_with = "user")]
        session_id: Vec<String>,
        /// End every session of this user, written DIRECTORY\userid.
        #[arg(long)]
        user: Option<String>,
        /// Do not ask before ending all sessions of the virtual proxy.
        #[arg(long)]
        yes: bool,
    },
}

/// Writes `out` to standard output. A reader that stopped early (`whosin
/// who | head`) is not an error: the rest is not wanted. (Rust ignores
/// SIGPIPE, so `print!` would panic there.)
fn print_all(out: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for every HTTPS client in the process (ring: no C toolchain beyond cc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Colours only on a terminal: under systemd, Docker or a redirect the log
    // is a file, where colour codes are raw ESC bytes in every line.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let source = whosin::config::Source::resolve(cli.config);
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => match whosin::daemon::run(&source) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("whosin: {e:#}");
                if e.downcast_ref::<whosin::daemon::BadConfig>().is_some() {
                    ExitCode::from(2)
                } else {
                    ExitCode::from(1)
                }
            }
        },
        Cmd::CheckConfig => check_config(&source),
        Cmd::Who {
            at,
            host,
            user,
            app,
            format,
            server,
            token,
            sort,
            ca,
        } => {
            // The config, when there is one, tells where the daemon listens and its token.
            let config = source.load().ok();
            let server = server.unwrap_or_else(|| match &config {
                Some(c) => {
                    let mut addr = c.http.listen;
                    if addr.ip().is_unspecified() {
                        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    let scheme = if c.http.tls.enabled() {
                        "https"
                    } else {
                        "http"
                    };
                    format!("{scheme}://{addr}")
                }
                None => "http://127.0.0.1:9842".to_owned(),
            });
            let token = token
                .or_else(|| std::env::var("WHOSIN_TOKEN").ok())
                .or_else(|| config.and_then(|c| c.http.auth_token));
            let opts = whosin::who::Options {
                server,
                at,
                host,
                user,
                app,
                format,
                token,
                sort,
                ca,
            };
            match whosin::who::run(&opts) {
                // JSON is the API's body byte for byte; the table ends in a newline.
                Ok(out) => match print_all(&out) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("whosin who: cannot write the answer: {e}");
                        ExitCode::from(1)
                    }
                },
                Err(e) => {
                    eprintln!("whosin who: {e:#}");
                    if e.downcast_ref::<whosin::who::BadRequest>().is_some() {
                        ExitCode::from(2)
                    } else {
                        ExitCode::from(1)
                    }
                }
            }
        }
        Cmd::Sessions { command } => sessions(&source, command),
        Cmd::ImportButlerSos { file, output } => import_butler_sos(&file, output.as_deref()),
        Cmd::Simulate {
            target,
            users,
            hosts,
            rate,
            duration,
            format,
            seed,
            report,
            loss,
        } => {
            if !(0.0..=1.0).contains(&loss) {
                eprintln!("whosin simulate: --loss {loss}: a share from 0 to 1, e.g. 0.01");
                return ExitCode::from(2);
            }
            let target = match resolve(&target) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("whosin simulate: --target {target}: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = simulate::Options {
                target,
                users,
                hosts,
                rate,
                duration: duration.get(),
                format,
                seed,
                progress: true,
                loss,
            };
            match simulate::run(&opts) {
                Ok(r) => {
                    if let Some(path) = report {
                        let json = serde_json::to_string_pretty(&r).expect("the report serializes");
                        if let Err(e) = std::fs::write(&path, json) {
                            eprintln!("whosin simulate: cannot write {}: {e}", path.display());
                            return ExitCode::from(1);
                        }
                    }
                    println!(
                        "sent {} datagrams to {target} in {:.1}s ({:.0}/s), {} of them from service accounts{}",
                        r.sent,
                        r.seconds,
                        r.sent as f64 / r.seconds.max(1e-9),
                        r.service_account_events,
                        if r.dropped > 0 {
                            format!("; {} lost on purpose (--loss)", r.dropped)
                        } else {
                            String::new()
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("whosin simulate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn resolve(target: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    target
        .to_socket_addrs()
        .map_err(|e| format!("not a host:port ({e})"))?
        .next()
        .ok_or_else(|| "resolves to no address".to_owned())
}

fn sessions(source: &whosin::config::Source, command: SessionsCmd) -> ExitCode {
    use whosin::qlik::cli::{self, Failure, Target};
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "whosin: {source} is not usable:\n  {}",
                e.lines().join("\n  ")
            );
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match command {
        SessionsCmd::List {
            host,
            virtual_proxy,
            format,
            sort,
        } => cli::list(
            &config,
            host.as_deref(),
            &virtual_proxy,
            format,
            sort,
            &mut out,
        ),
        SessionsCmd::End {
            host,
            virtual_proxy,
            session_id,
            user,
            yes,
        } => {
            let target = match user {
                Some(u) => match u.split_once('\\') {
                    Some((dir, id)) if !dir.is_empty() && !id.is_empty() => {
                        Target::User(dir.to_owned(), id.to_owned())
                    }
                    _ => {
                        eprintln!("whosin: --user {u:?}: write it as DIRECTORY\\userid");
                        return ExitCode::from(2);
                    }
                },
                None if !session_id.is_empty() => Target::Sessions(session_id),
                None => Target::All,
            };
            let stdin = std::io::stdin();
            cli::end(
                &config,
                &host,
                &virtual_proxy,
                target,
                yes,
                &mut stdin.lock(),
                &mut out,
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("whosin: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("whosin: {e}");
            ExitCode::from(1)
        }
    }
}

fn import_butler_sos(file: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("whosin: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let name = file.display().to_string();
    let imported = match whosin::import::convert(&text, &name, output.is_some()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("whosin: {e}");
            return ExitCode::from(2);
        }
    };
    match output {
        Some(out) => {
            if let Err(e) = write_private(out, &imported.yaml) {
                eprintln!("whosin: cannot write {}: {e}", out.display());
                return ExitCode::from(1);
            }
            eprintln!(
                "wrote {}; check it with `whosin check-config -c {}`",
                out.display(),
                out.display()
            );
        }
        None => {
            if let Err(e) = print_all(&imported.yaml) {
                eprintln!("whosin: cannot write the configuration: {e}");
                return ExitCode::from(1);
            }
            let envs: Vec<&str> = imported
                .secrets
                .iter()
                .filter(|s| !s.value.is_empty())
                .map(|s| s.env.as_str())
                .collect();
            if !envs.is_empty() {
                eprintln!(
                    "secrets are not printed: set {} in whosin's environment, or use -o FILE to write them into the file",
                    envs.join(", ")
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// Writes a file only its owner can read (it may hold secrets).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

fn check_config(source: &whosin::config::Source) -> ExitCode {
    match source.load() {
        Ok(_) => {
            println!("{source} is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let lines = e.lines();
            eprintln!(
                "{source} has {} problem{}:",
                lines.len(),
                if lines.len() == 1 { "" } else { "s" }
            );
            for l in lines {
                eprintln!("  {l}");
            }
            ExitCode::from(2)
        }
    }
}
