//! The `parley` command: run the server, check a configuration, manage local accounts.

mod archive_cli;

use anyhow::Context;
use clap::{Parser, Subcommand};
use parley_config::{Config, LogFormat};
use parley_directory::{PersonDetails, StaticDirectory};
use std::path::PathBuf;

/// Parley, a self-hosted enterprise XMPP server.
///
/// Without a configuration file Parley runs on its embedded defaults: domain `localhost`,
/// STARTTLS on port 5222, direct TLS on 5223, data (store, users, certificate) in `./data`.
#[derive(Parser)]
#[command(name = "parley", version, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML); every option is documented in config/parley.example.toml.
    #[arg(long, short, global = true, env = "PARLEY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM; SIGHUP reloads the TLS certificate.
    Serve,
    /// Check the configuration and report every error at once, with its key path.
    CheckConfig,
    /// Manage accounts of the embedded (static file) directory.
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// The compliance archive: verify, search, export, purge, legal holds, access log. Run
    /// these while the server is stopped (they open the store file).
    Archive {
        #[command(subcommand)]
        action: archive_cli::ArchiveCommand,
    },
    /// Inspect the configured directory.
    Directory {
        #[command(subcommand)]
        action: DirectoryCommand,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Connect with the configured settings and print the users and groups the filters match,
    /// the entries that get no account (unmappable or colliding), and optionally one user.
    Check {
        /// Also print this user's entry and mapped details.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from PARLEY_PASSWORD, or from standard input.
    Add {
        /// The account name (the part before @ in its JID).
        localpart: String,
        /// Full name shown to contacts.
        #[arg(long)]
        name: Option<String>,
        /// E-mail address.
        #[arg(long)]
        email: Option<String>,
        /// Department, for reports and vCards.
        #[arg(long)]
        department: Option<String>,
        /// Make the account a server administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Create many accounts at once from a file of `localpart password [groups=g1,g2]` lines (`-`
    /// for standard input); all are added, or none if one is invalid or exists already.
    Import { file: PathBuf },
    /// Set a new password (PARLEY_PASSWORD or standard input).
    Passwd { localpart: String },
    /// Delete an account; its live sessions end within a second.
    Remove { localpart: String },
    /// List accounts.
    List,
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    match Config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(loaded.config)
        }
        Err(errors) => anyhow::bail!("{} has errors:\n{errors}", path.display()),
    }
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("PARLEY_PASSWORD") {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "no password given (set PARLEY_PASSWORD or pipe it in)"
    );
    Ok(password)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journal gets plain text that tools can match.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = parley_server::start(&config).await?;
    println!(
        "Parley is serving {} (data in {})",
        config.server.domain,
        config.server.data_dir.display()
    );
    println!("TLS certificate SHA-256 fingerprint: {}", server.cert_fingerprint);
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    server.wait().await;
    Ok(())
}

async fn user(config: &Config, action: UserCommand) -> anyhow::Result<()> {
    let path = config.static_directory_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let directory = StaticDirectory::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    match action {
        UserCommand::Add {
            localpart,
            name,
            email,
            department,
            admin,
        } => {
            let password = read_password()?;
            let details = PersonDetails {
                display_name: name,
                email,
                department,
                admin,
                ..Default::default()
            };
            let person = directory.add_user(&localpart, &password, details).await?;
            println!("added {}@{}", person.localpart, config.server.domain);
        }
        UserCommand::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading accounts from standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let mut users = Vec::new();
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((localpart, password)) = line.split_once(char::is_whitespace) else {
                    anyhow::bail!("line {}: expected `localpart password`", number + 1);
                };
                let (password, groups) = split_import_groups(password.trim());
                let details = PersonDetails {
                    groups,
                    ..PersonDetails::default()
                };
                users.push((localpart.to_owned(), password.to_owned(), details));
            }
            let added = directory.add_users(users).await?;
            println!("added {} accounts", added.len());
        }
        UserCommand::Passwd { localpart } => {
            let password = read_password()?;
            directory.set_password(&localpart, &password).await?;
            println!("password changed for {localpart}@{}", config.server.domain);
        }
        UserCommand::Remove { localpart } => {
            directory.remove_user(&localpart).await?;
            println!("removed {localpart}@{}", config.server.domain);
        }
        UserCommand::List => {
            for person in directory.list().await? {
                let name = person.display_name.as_deref().unwrap_or("");
                let admin = if person.admin { " (admin)" } else { "" };
                println!("{}@{}\t{name}{admin}", person.localpart, config.server.domain);
            }
        }
    }
    Ok(())
}

/// Splits an optional trailing `groups=a,b` field off an import line's password. The `groups=`
/// prefix keeps passwords that contain spaces importable as before.
fn split_import_groups(rest: &str) -> (&str, Vec<String>) {
    if let Some((password, last)) = rest.rsplit_once(char::is_whitespace)
        && let Some(list) = last.strip_prefix("groups=")
    {
        let groups = list
            .split(',')
            .filter(|group| !group.is_empty())
            .map(str::to_owned)
            .collect();
        return (password.trim_end(), groups);
    }
    (rest, Vec::new())
}

/// The allocator is a trade-off measured with `bench/` (docs/benchmarks.md): glibc's malloc with
/// one arena keeps an idle TLS session at ~10.5 KiB; mimalloc (`--features mimalloc`) delivers
/// ~6 % more chat messages per second but costs ~18 KiB per idle session. The default keeps
/// memory per session, which decides how many users one machine holds.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Caps glibc's malloc arenas before any thread starts. By default glibc gives each thread
/// its own arena (up to 8 per core); the transient allocations of thousands of TLS and SASL
/// handshakes spread over them leave holes between long-lived session state, and an idle
/// session ended up costing ~9 KiB more resident memory than with one arena.
/// `MALLOC_ARENA_MAX`, if set, still wins.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only adjusts allocator parameters; it is called once, first thing in
        // main, before the runtime's threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
fn limit_malloc_arenas() {}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig => match cli.config.as_ref() {
            None => {
                println!("no configuration file given: the embedded defaults apply");
                Ok(())
            }
            Some(path) => match Config::load(path) {
                Ok(loaded) => {
                    for warning in &loaded.warnings {
                        println!("warning: {warning}");
                    }
                    println!("{}: OK", path.display());
                    Ok(())
                }
                Err(errors) => {
                    eprintln!("{}: {} error(s)\n{errors}", path.display(), errors.errors.len());
                    return std::process::ExitCode::from(1);
                }
            },
        },
        command => match load_config(cli.config.as_ref()) {
            Err(e) => Err(e),
            Ok(config) => match command {
                Command::Serve => {
                    init_logging(&config);
                    serve(config).await
                }
                Command::User { action } => user(&config, action).await,
                Command::Archive { action } => archive_cli::run(&config, action).await,
                Command::Directory {
                    action: DirectoryCommand::Check { user },
                } => {
                    let mut stdout = std::io::stdout();
                    parley_server::directory_check::run(&config, user.as_deref(), &mut stdout).await
                }
                Command::CheckConfig => unreachable!("handled above"),
            },
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_import_groups;

    #[test]
    fn import_lines_take_an_optional_groups_field() {
        assert_eq!(
            split_import_groups("pass1 groups=g1,g2"),
            ("pass1", vec!["g1".to_owned(), "g2".to_owned()])
        );
        assert_eq!(
            split_import_groups("pass with spaces"),
            ("pass with spaces", Vec::new())
        );
        assert_eq!(split_import_groups("pass1 groups="), ("pass1", Vec::new()));
        // A password alone that happens to start with the prefix stays a password.
        assert_eq!(split_import_groups("groups=x"), ("groups=x", Vec::new()));
    }
}
