//! The `parley` server: composes the configuration, picks the backends, wires the modules and
//! runs the listeners until shutdown.
//!
//! Owns: start-up and shutdown, the choice of concrete storage and directory backends, the
//! self-signed certificate of the embedded defaults, TLS reloads, ending the sessions of
//! accounts the directory removes. It is the only crate that names concrete backends.
//!
//! Must not touch: protocol logic. Everything XMPP happens in the crates it wires together.

pub mod admin_http;
pub mod certs;
pub mod directory_check;

use anyhow::Context;
use async_trait::async_trait;
use parley_archive::{ArchiveOptions, ComplianceArchive, SystemClock};
use parley_c2s::sasl::Mechanism;
use parley_c2s::{C2sContext, C2sSettings, ListenerMode, TlsSettings};
use parley_config::{Config, DirectoryBackend, StorageBackend};
use parley_directory::{Directory, DirectoryChange, LdapDirectory, StaticDirectory};
use parley_proto::reader::Limits;
use parley_proto::{BareJid, StreamError, StreamErrorCondition};
use parley_router::{Accounts, Event, Router};
use parley_storage::{MemoryStore, RedbStore, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Installs the process-wide TLS crypto provider (aws-lc-rs); harmless when already done.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Local accounts as the router sees them: whoever the directory knows.
struct DirectoryAccounts(Arc<dyn Directory>);

#[async_trait]
impl Accounts for DirectoryAccounts {
    async fn exists(&self, localpart: &str) -> bool {
        matches!(self.0.person(localpart).await, Ok(Some(_)))
    }
}

/// The configured directory backend, started.
pub async fn open_directory(config: &Config) -> anyhow::Result<Arc<dyn Directory>> {
    Ok(match config.directory.backend {
        DirectoryBackend::Static => {
            let path = config.static_directory_path();
            Arc::new(
                StaticDirectory::open(&path)
                    .await
                    .with_context(|| format!("opening the user file {}", path.display()))?,
            )
        }
        DirectoryBackend::Ldap => Arc::new(
            LdapDirectory::start(&config.ldap)
                .await
                .context("setting up the LDAP directory")?,
        ),
    })
}

/// A started server.
pub struct RunningServer {
    pub router: Router,
    pub starttls_addrs: Vec<SocketAddr>,
    pub direct_tls_addrs: Vec<SocketAddr>,
    pub cert_fingerprint: String,
    pub tls: Arc<TlsSettings>,
    /// The compliance archive every message is recorded in.
    pub archive: Arc<ComplianceArchive>,
    /// Where the admin HTTP API listens, when enabled.
    pub admin_http_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningServer {
    /// A handle that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, tells every session `system-shutdown`, and waits until all are closed.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Runs until the shutdown token is cancelled, then shuts down.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
    }
}

fn mechanisms(names: &[String]) -> Vec<Mechanism> {
    names
        .iter()
        .filter_map(|name| Mechanism::from_name(name))
        .collect()
}

async fn bind_all(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for addr in addrs {
        listeners.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
        );
    }
    Ok(listeners)
}

/// Starts a server from `config`: opens storage and the directory, prepares TLS, wires the
/// modules and binds every listener before returning.
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    install_crypto_provider();
    let domain = BareJid::new(&config.server.domain)
        .with_context(|| format!("server.domain {:?} is not a valid domain", config.server.domain))?;
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("creating the data directory {}", config.server.data_dir.display()))?;

    let store: Arc<dyn Store> = match config.storage.backend {
        StorageBackend::Redb => {
            let path = config.storage_path();
            Arc::new(RedbStore::open(&path).with_context(|| format!("opening the store {}", path.display()))?)
        }
        StorageBackend::Memory => Arc::new(MemoryStore::new()),
    };
    let directory = open_directory(config).await?;

    let archive = ComplianceArchive::open(
        store.clone(),
        Some(directory.clone()),
        domain.clone(),
        ArchiveOptions::from_config(&config.archive),
        Arc::new(SystemClock),
    )
    .await
    .context("opening the compliance archive")?;

    let certificate = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => certs::CertificatePaths {
            cert: cert.clone(),
            key: key.clone(),
            generated: false,
        },
        _ => certs::ensure_self_signed(&config.tls_dir(), &config.server.domain)?,
    };
    let tls = Arc::new(TlsSettings::load(&certificate.cert, &certificate.key)?);
    let cert_fingerprint = certs::fingerprint(&certificate.cert)?;
    if certificate.generated {
        tracing::info!(cert = %certificate.cert.display(), fingerprint = %cert_fingerprint, "generated a self-signed certificate");
    }

    let metrics = Arc::new(admin_http::MetricsModule::default());
    let counters = metrics.counters.clone();
    let router = modules::wire(
        Router::builder(domain.clone(), Arc::new(DirectoryAccounts(directory.clone())))
            .compliance(Arc::new(archive.stage()))
            .module(metrics),
        config,
        &store,
        &directory,
    )
    .max_resources_per_account(config.c2s.max_resources_per_account)
    .build()
    .map_err(|errors| {
        anyhow::anyhow!(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;

    let c2s = &config.c2s;
    let shutdown = CancellationToken::new();
    let settings = C2sSettings {
        domain: domain.clone(),
        require_starttls: c2s.require_starttls,
        pre_auth_timeout: c2s.pre_auth_timeout.into(),
        ping_idle_after: c2s.ping_idle_after.into(),
        ping_timeout: c2s.ping_timeout.into(),
        close_timeout: c2s.close_timeout.into(),
        limits: Limits {
            max_stanza_bytes: c2s.max_stanza_size.to_usize(),
            max_depth: c2s.max_depth,
            max_attributes: c2s.max_attributes,
            max_token_bytes: c2s.max_token_size.to_usize(),
        },
        outbound_queue: c2s.outbound_queue,
        outbound_queue_bytes: c2s.outbound_queue_bytes.to_usize(),
        max_connections_per_ip: c2s.max_connections_per_ip,
        mechanisms: mechanisms(&c2s.sasl_mechanisms),
        max_auth_attempts: 3,
    };
    let ctx = Arc::new(C2sContext {
        router: router.clone(),
        directory: directory.clone(),
        tls: tls.clone(),
        settings,
        shutdown: shutdown.clone(),
    });

    let mut tasks = JoinSet::new();
    let mut starttls_addrs = Vec::new();
    let mut direct_tls_addrs = Vec::new();
    for (mode, addrs, bound) in [
        (ListenerMode::StartTls, &c2s.starttls_listen, &mut starttls_addrs),
        (
            ListenerMode::DirectTls,
            &c2s.direct_tls_listen,
            &mut direct_tls_addrs,
        ),
    ] {
        for listener in bind_all(addrs).await? {
            bound.push(listener.local_addr()?);
            tasks.spawn(parley_c2s::serve(listener, mode, ctx.clone()));
        }
    }
    tasks.spawn(end_removed_accounts(
        router.clone(),
        directory.clone(),
        shutdown.clone(),
    ));
    let reload_every: Duration = config.tls.reload_interval.into();
    if !reload_every.is_zero() {
        tasks.spawn(reload_tls(tls.clone(), reload_every, shutdown.clone()));
    }
    let purge_every: Duration = config.archive.purge_interval.into();
    if !purge_every.is_zero() {
        tasks.spawn(purge_archive(archive.clone(), purge_every, shutdown.clone()));
    }
    let mut admin_http_addr = None;
    if let Some(addr) = config.admin_http.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin_http.listen on {addr}"))?;
        admin_http_addr = Some(listener.local_addr()?);
        let state = Arc::new(admin_http::AdminState {
            router: router.clone(),
            directory: directory.clone(),
            archive: archive.clone(),
            store: store.clone(),
            counters,
            export_root: config.server.data_dir.join("exports"),
            domain: domain.to_string(),
        });
        tasks.spawn(admin_http::serve(listener, state, shutdown.clone()));
    }
    let flush_store = store.clone();
    let store_shutdown = shutdown.clone();
    tasks.spawn(async move {
        store_shutdown.cancelled().await;
        if let Err(e) = flush_store.flush().await {
            tracing::error!(error = %e, "flushing the store at shutdown");
        }
    });
    tracing::info!(?starttls_addrs, ?direct_tls_addrs, ?admin_http_addr, domain = %config.server.domain, "Parley is listening");
    Ok(RunningServer {
        router,
        starttls_addrs,
        direct_tls_addrs,
        cert_fingerprint,
        tls,
        archive,
        admin_http_addr,
        shutdown,
        tasks,
    })
}

/// Deletes expired archive records every `every` (the first run after one period).
async fn purge_archive(archive: Arc<ComplianceArchive>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(error) = archive.purge("retention", false).await {
            tracing::error!(%error, "the archive purge failed");
        }
    }
}

/// Ends the live sessions of accounts the directory removes or disables.
async fn end_removed_accounts(router: Router, directory: Arc<dyn Directory>, shutdown: CancellationToken) {
    let mut changes = directory.subscribe();
    loop {
        let change = tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.recv() => change,
        };
        let localpart = match change {
            Ok(DirectoryChange::UserRemoved(localpart) | DirectoryChange::UserDisabled(localpart)) => {
                localpart
            }
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "directory changes were missed");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Ok(node) = jid::NodePart::new(&localpart) else {
            continue;
        };
        let account = BareJid::from_parts(Some(&node), router.domain().domain());
        let closed = router.sessions().close_account(
            &account,
            &StreamError::with_text(StreamErrorCondition::NotAuthorized, "The account was disabled"),
        );
        tracing::info!(%account, closed, "account removed from the directory; sessions ended");
        router.emit(Event::AccountRemoved(account)).await;
    }
}

/// Picks up a renewed certificate without a restart: on a timer, and on SIGHUP.
async fn reload_tls(tls: Arc<TlsSettings>, every: Duration, shutdown: CancellationToken) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let result = if forced {
            tls.reload().map(|()| true)
        } else {
            tls.reload_if_changed()
        };
        match result {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; keeping the current one"),
        }
    }
}

mod modules {
    //! Which modules run, with their options from the configuration.
    use super::*;
    use parley_archive::{MamModule, MamOptions};
    use parley_im::{
        CapsModule, DirectoryVcards, DiscoModule, DiscoOptions, OfflineModule, OfflineOptions, PingModule,
        PrivateModule, PrivateOptions, SearchModule, SearchOptions, VcardModule, VcardOptions, VersionModule,
        VersionOptions,
    };
    use parley_roster::{
        DirectorySharedGroups, NoSharedGroups, RosterModule, RosterOptions, SharedGroupMapping, SharedGroups,
    };
    use parley_router::RouterBuilder;
    use parley_storage::KeyValue;

    /// Shared roster groups from the directory, as `[[roster.shared_groups]]` maps them.
    fn shared_groups(config: &Config, directory: &Arc<dyn Directory>) -> Arc<dyn SharedGroups> {
        let roster = &config.roster;
        let Ok(domain) = BareJid::new(&config.server.domain) else {
            return Arc::new(NoSharedGroups);
        };
        if roster.shared_groups.is_empty() {
            return Arc::new(NoSharedGroups);
        }
        let mappings = roster
            .shared_groups
            .iter()
            .map(|shared| SharedGroupMapping {
                directory_group: shared.group.clone(),
                roster_group: shared.roster_group().to_owned(),
            })
            .collect();
        Arc::new(DirectorySharedGroups::new(
            directory.clone(),
            domain,
            mappings,
            roster.max_shared_contacts,
        ))
    }

    /// MAM's `default='roster'` preference reads the roster as clients see it.
    struct RosterOfModule(Arc<RosterModule>);

    #[async_trait::async_trait]
    impl parley_archive::RosterContacts for RosterOfModule {
        async fn contacts(&self, owner: &BareJid) -> Vec<String> {
            match self.0.contacts(owner).await {
                Ok(contacts) => contacts.iter().map(ToString::to_string).collect(),
                Err(error) => {
                    // Showing nobody is the safe reading of "only my contacts" when unknown.
                    tracing::warn!(%owner, %error, "roster unreadable for MAM preferences");
                    Vec::new()
                }
            }
        }
    }

    /// vcard-temp, answered from the directory for the people it describes.
    fn vcards(config: &Config, kv: &Arc<dyn KeyValue>, directory: &Arc<dyn Directory>) -> VcardModule {
        let module = VcardModule::new(
            kv.clone(),
            VcardOptions {
                max_size: config.vcard.max_size.to_usize(),
            },
        );
        match BareJid::new(&config.server.domain) {
            Ok(domain) if config.vcard.from_directory => {
                module.with_source(Arc::new(DirectoryVcards::new(directory.clone(), domain)))
            }
            _ => module,
        }
    }

    pub fn wire(
        builder: RouterBuilder,
        config: &Config,
        store: &Arc<dyn Store>,
        directory: &Arc<dyn Directory>,
    ) -> RouterBuilder {
        let kv: Arc<dyn KeyValue> = store.clone();
        let disco = DiscoOptions::default();
        // `start` has already refused an invalid domain.
        let builder = match BareJid::new(&config.server.domain) {
            Ok(domain) => builder.module(Arc::new(SearchModule::new(
                directory.clone(),
                domain,
                SearchOptions::default(),
            ))),
            Err(_) => builder,
        };
        let archive: Arc<dyn parley_storage::Archive> = store.clone();
        let roster = Arc::new(RosterModule::with_shared_groups(
            kv.clone(),
            RosterOptions {
                max_items: config.roster.max_items,
            },
            shared_groups(config, directory),
        ));
        builder
            .module(Arc::new(
                MamModule::new(archive, kv.clone(), MamOptions::default())
                    .with_roster(Arc::new(RosterOfModule(roster.clone()))),
            ))
            .module(roster)
            .module(Arc::new(DiscoModule::new(disco.clone())))
            .module(Arc::new(CapsModule::new(disco)))
            .module(Arc::new(PingModule::new()))
            .module(Arc::new(VersionModule::new(VersionOptions::default())))
            .module(Arc::new(vcards(config, &kv, directory)))
            .module(Arc::new(PrivateModule::new(
                kv.clone(),
                PrivateOptions {
                    max_size: config.private_storage.max_size.to_usize(),
                    ..Default::default()
                },
            )))
            .module(Arc::new(OfflineModule::new(
                kv,
                OfflineOptions {
                    max_messages: config.offline.max_messages as u64,
                },
            )))
    }
}
