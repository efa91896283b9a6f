//! `parley archive ...`: verify, search, export, purge, legal holds and the access log.
//!
//! These commands open the store file directly, so they run while the server is stopped (redb
//! allows one process per file); on a running server the admin API offers the same functions.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use parley_archive::{
    ArchiveOptions, ComplianceArchive, ExportFormat, ExportManifest, OutsideCheckpoint, SearchFilter,
    SystemClock, qualified_user, rfc3339,
};
use parley_config::{Config, StorageBackend};
use parley_proto::BareJid;
use parley_storage::{RedbStore, Store};

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// Walk the hash chain: report the first record edited, removed or inserted, or "intact".
    /// Exits with status 1 when the archive was tampered with.
    Verify {
        /// A checkpoint kept outside the store, `SEQ:HEX` (as `verify` prints the head and the
        /// server logs each checkpoint): record SEQ must still have that hash. Repeatable.
        #[arg(long = "checkpoint", value_name = "SEQ:HEX")]
        checkpoints: Vec<OutsideCheckpoint>,
        /// An export's manifest.json: the chain head it recorded is checked the same way.
        /// Repeatable.
        #[arg(long = "manifest", value_name = "FILE")]
        manifests: Vec<PathBuf>,
    },
    /// Search messages; prints the counts and the first matches. Recorded in the access log.
    Search {
        #[command(flatten)]
        filter: FilterArgs,
        /// Most matches printed (the counts always cover all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Export messages for eDiscovery into an empty directory, with manifest.json. Recorded in
    /// the access log.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// jsonl, csv, eml (one RFC 5322 file per message) or mbox.
        #[arg(long)]
        format: ExportFormat,
        /// The directory to create (it must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Delete what the retention settings say has expired, except users on legal hold.
    Purge {
        /// Report what would be deleted without deleting it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Legal holds: a user on hold has none of their messages purged.
    Hold {
        #[command(subcommand)]
        action: HoldCommand,
    },
    /// List who searched or exported what, newest first.
    AccessLog {
        /// Most entries listed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Only entries older than this one (the `#` number of the last entry of the page before).
        #[arg(long)]
        before: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum HoldCommand {
    /// Put a user (bare JID or localpart) on legal hold.
    Set {
        user: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Release a user's legal hold.
    Release {
        user: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// List users on hold.
    List,
}

#[derive(Args)]
pub struct ActorArg {
    /// Who is acting, for the access log (default: the login name).
    #[arg(long)]
    actor: Option<String>,
}

impl ActorArg {
    fn name(&self) -> String {
        self.actor.clone().unwrap_or_else(|| {
            format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            )
        })
    }
}

#[derive(Args)]
pub struct FilterArgs {
    /// A participant (bare JID or localpart); repeat to require several.
    #[arg(long = "participant")]
    participants: Vec<String>,
    /// The sender.
    #[arg(long)]
    from: Option<String>,
    /// The recipient.
    #[arg(long)]
    to: Option<String>,
    /// A local participant belongs to this department.
    #[arg(long)]
    department: Option<String>,
    /// From this time on: RFC 3339 (2025-03-01T09:00:00Z) or a date (2025-03-01).
    #[arg(long)]
    start: Option<String>,
    /// Up to this time: RFC 3339, or a date (inclusive: the whole day).
    #[arg(long)]
    end: Option<String>,
    /// Words that must all occur (case-insensitive).
    #[arg(long)]
    keyword: Option<String>,
}

impl FilterArgs {
    fn to_filter(&self, domain: &str) -> anyhow::Result<SearchFilter> {
        let jid = |text: &String| qualified_user(text, domain);
        Ok(SearchFilter {
            participants: self.participants.iter().map(jid).collect(),
            from: self.from.as_ref().map(jid),
            to: self.to.as_ref().map(jid),
            department: self.department.clone(),
            start: self
                .start
                .as_deref()
                .map(|text| parse_time(text, false))
                .transpose()?,
            end: self
                .end
                .as_deref()
                .map(|text| parse_time(text, true))
                .transpose()?,
            keyword: self.keyword.clone(),
        })
    }
}

/// RFC 3339, or a bare date meaning its first (or, for an end, its last) microsecond, UTC.
fn parse_time(text: &str, end_of_day: bool) -> anyhow::Result<i64> {
    use time::format_description::well_known::Rfc3339;
    let at = if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        at
    } else {
        let date = time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]"))
            .with_context(|| format!("{text:?} is neither RFC 3339 nor a date like 2025-03-01"))?;
        let start = date.midnight().assume_utc();
        if end_of_day {
            start + time::Duration::days(1) - time::Duration::microseconds(1)
        } else {
            start
        }
    };
    i64::try_from(at.unix_timestamp_nanos() / 1000).context("the time is out of range")
}

async fn open(config: &Config) -> anyhow::Result<Arc<ComplianceArchive>> {
    anyhow::ensure!(
        config.storage.backend == StorageBackend::Redb,
        "the archive commands need the redb store (storage.backend = \"redb\")"
    );
    let path = config.storage_path();
    anyhow::ensure!(path.exists(), "there is no store at {}", path.display());
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).with_context(|| {
        format!(
            "opening the store {} (is the server running? stop it first)",
            path.display()
        )
    })?);
    let directory = parley_server::open_directory(config).await?;
    let domain = BareJid::new(&config.server.domain).context("server.domain is not a valid domain")?;
    Ok(ComplianceArchive::open(
        store,
        Some(directory),
        domain,
        ArchiveOptions::from_config(&config.archive),
        Arc::new(SystemClock),
    )
    .await?)
}

/// Runs one `parley archive` command.
pub async fn run(config: &Config, command: ArchiveCommand) -> anyhow::Result<()> {
    let archive = open(config).await?;
    let domain = config.server.domain.as_str();
    match command {
        ArchiveCommand::Verify {
            mut checkpoints,
            manifests,
        } => {
            for path in &manifests {
                let manifest = ExportManifest::read(path)
                    .with_context(|| format!("reading the manifest {}", path.display()))?;
                checkpoints.push(OutsideCheckpoint::from(&manifest.checkpoint));
            }
            let report = archive.verify_against(&checkpoints).await?;
            println!("{report}");
            anyhow::ensure!(report.is_intact(), "the archive failed verification");
        }
        ArchiveCommand::Search {
            filter,
            limit,
            json,
            actor,
        } => {
            let filter = filter.to_filter(domain)?;
            let result = archive.search(&actor.name(), &filter, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                println!("{} messages", result.total);
                if let (Some(first), Some(last)) = (result.first_ts, result.last_ts) {
                    println!("from {} to {}", rfc3339(first), rfc3339(last));
                }
                for (sender, count) in &result.by_sender {
                    println!("  {count}\tfrom {sender}");
                }
                for hit in &result.hits {
                    println!(
                        "#{}\t{}\t{} -> {}\t{}",
                        hit.seq,
                        rfc3339(hit.ts),
                        hit.from,
                        hit.to,
                        hit.body.as_deref().unwrap_or("").replace(['\r', '\n'], " ")
                    );
                }
            }
        }
        ArchiveCommand::Export {
            filter,
            format,
            out,
            actor,
        } => {
            let filter = filter.to_filter(domain)?;
            let manifest = archive.export(&actor.name(), &filter, format, &out).await?;
            println!(
                "exported {} messages to {} ({}), manifest.json written",
                manifest.messages,
                out.display(),
                format.name()
            );
            for file in &manifest.files {
                println!("  {}  {} ({} bytes)", file.sha256, file.name, file.bytes);
            }
        }
        ArchiveCommand::Purge { dry_run, actor } => {
            let report = archive.purge(&actor.name(), dry_run).await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            println!(
                "{verb} {} messages, {} MAM copies; {} expired messages kept for legal holds",
                report.deleted, report.mam_deleted, report.kept_on_hold
            );
            for (first, last) in &report.ranges {
                if first == last {
                    println!("  #{first}");
                } else {
                    println!("  #{first}-#{last}");
                }
            }
        }
        ArchiveCommand::Hold { action } => match action {
            HoldCommand::Set { user, reason, actor } => {
                let hold = archive
                    .set_hold(&actor.name(), &qualified_user(&user, domain), &reason)
                    .await?;
                println!("{} is on legal hold: {}", hold.user, hold.reason);
            }
            HoldCommand::Release { user, reason, actor } => {
                let hold = archive
                    .release_hold(&actor.name(), &qualified_user(&user, domain), &reason)
                    .await?;
                println!("released the legal hold on {}", hold.user);
            }
            HoldCommand::List => {
                for hold in archive.holds().await? {
                    println!(
                        "{}\tsince {}\tby {}\t{}",
                        hold.user,
                        rfc3339(hold.since),
                        hold.actor,
                        hold.reason
                    );
                }
            }
        },
        ArchiveCommand::AccessLog { limit, before } => {
            for entry in archive.access_log(limit, before).await? {
                println!(
                    "#{}\t{}\t{}\t{}\t{} messages\t{}",
                    entry.seq,
                    rfc3339(entry.ts),
                    entry.actor,
                    entry.action,
                    entry.count,
                    entry.filter
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_whole_days() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z", false).unwrap(), 1_000_000);
        assert_eq!(parse_time("1970-01-02", false).unwrap(), 86_400_000_000);
        assert_eq!(parse_time("1970-01-01", true).unwrap(), 86_400_000_000 - 1);
        assert!(parse_time("yesterday", false).is_err());
    }
}
