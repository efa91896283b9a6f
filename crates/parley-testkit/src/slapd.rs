//! [`Slapd`]: Debian's OpenLDAP server in a temp dir on free loopback ports, seeded from the
//! LDIF fixtures in `tests/fixtures/ldap/`, with StartTLS on its `ldap://` port and an `ldaps://`
//! port, both presenting a certificate from a [`TestCa`]. Killed on drop.

use crate::certs::TestCa;
use anyhow::{Context, bail};
use parley_config::{LdapConfig, LdapGroupConfig, LdapMemberAttribute, Secret};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The suffix of the test directory.
pub const LDAP_BASE_DN: &str = "dc=example,dc=com";
/// The directory manager (may write anything); tests use it for `ldapmodify`.
pub const LDAP_ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
pub const LDAP_ADMIN_PASSWORD: &str = "admin-secret";
/// The read-only service account Parley searches with.
pub const LDAP_SERVICE_DN: &str = "cn=parley,ou=services,dc=example,dc=com";
pub const LDAP_SERVICE_PASSWORD: &str = "parley-service-secret";

/// How long slapd may take to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts tried on fresh ports when slapd finds one of its ports taken.
const PORT_ATTEMPTS: usize = 3;
/// What slapd logs when its port is taken (`daemon: bind(..) failed errno=98 (Address already in use)`).
const ADDRESS_IN_USE: &str = "Address already in use";

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ldap")
}

/// Finds a Debian OpenLDAP binary (in /usr/sbin, often not on a user's PATH).
fn sbin_tool(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.is_file() {
        return sbin;
    }
    PathBuf::from(name)
}

/// A running (or stopped) test slapd. Ports and data survive [`Slapd::stop`]/[`Slapd::start`].
pub struct Slapd {
    /// Holds `slapd.conf`, the database, the certificates and `slapd.log`.
    pub dir: tempfile::TempDir,
    /// The CA that signed slapd's certificate (`ca.ca_path` goes into `ldap.ca_file`).
    pub ca: TestCa,
    /// Plain LDAP port (StartTLS available).
    pub ldap_port: u16,
    /// LDAPS port (TLS from the first byte).
    pub ldaps_port: u16,
    child: Option<Child>,
}

impl Slapd {
    /// Whether slapd can be used: true if installed; under `CI=true` a missing slapd fails the
    /// test (the test command installs it), otherwise the caller should skip.
    pub fn available() -> bool {
        if Path::new("/usr/sbin/slapd").is_file() && Path::new("/usr/sbin/slapadd").is_file() {
            return crate::require_tool("ldapmodify");
        }
        crate::require_tool("slapd")
    }

    /// Starts a slapd seeded with `tests/fixtures/ldap/directory.ldif`.
    pub fn spawn() -> anyhow::Result<Self> {
        Self::spawn_with(&[fixtures_dir().join("directory.ldif")])
    }

    /// Starts a slapd seeded with the given LDIF files, in order.
    pub fn spawn_with(ldif_files: &[PathBuf]) -> anyhow::Result<Self> {
        Self::spawn_seeded(ldif_files, true)
    }

    /// Starts a slapd seeded with `directory.ldif` but without the `syncprov` overlay, so it
    /// offers no RFC 4533 syncrepl (like Active Directory): Parley must poll.
    pub fn spawn_without_syncprov() -> anyhow::Result<Self> {
        Self::spawn_seeded(&[fixtures_dir().join("directory.ldif")], false)
    }

    fn spawn_seeded(ldif_files: &[PathBuf], syncprov: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("parley-slapd").tempdir()?;
        let ca = TestCa::generate(&dir.path().join("tls"), "localhost")?;
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db)?;
        let conf = dir.path().join("slapd.conf");
        std::fs::write(&conf, slapd_conf(dir.path(), &ca, syncprov))?;
        for ldif in ldif_files {
            let output = Command::new(sbin_tool("slapadd"))
                .arg("-f")
                .arg(&conf)
                .arg("-l")
                .arg(ldif)
                .output()
                .context("running slapadd")?;
            if !output.status.success() {
                bail!(
                    "slapadd {} failed: {}",
                    ldif.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        let mut slapd = Self {
            dir,
            ca,
            ldap_port: free_port()?,
            ldaps_port: free_port()?,
            child: None,
        };
        // A port found free can be taken before slapd binds it (by another test, or as the
        // ephemeral port of an outgoing connection); the first start may then move to others.
        for _ in 1..PORT_ATTEMPTS {
            match slapd.start() {
                Err(_) if slapd.log_tail().contains(ADDRESS_IN_USE) => {
                    (slapd.ldap_port, slapd.ldaps_port) = (free_port()?, free_port()?);
                }
                outcome => return outcome.map(|()| slapd),
            }
        }
        slapd.start().map(|()| slapd)
    }

    /// `ldap://127.0.0.1:<port>`.
    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// `ldaps://127.0.0.1:<port>`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// Starts slapd again on the same ports and data (after [`Slapd::stop`]); waits until it
    /// accepts connections on both ports.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("slapd.log"))?;
        let urls = format!(
            "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
            self.ldap_port, self.ldaps_port
        );
        // `-d none` keeps slapd in the foreground, so it is our child and dies with `kill`, and logs
        // only what it always logs (start-up failures such as a port in use).
        let child = Command::new(sbin_tool("slapd"))
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .args(["-h", &urls, "-d", "none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting slapd")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        for port in [self.ldap_port, self.ldaps_port] {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    self.child = None;
                    // The log's directory is removed with `self`, so the error carries its end.
                    bail!("slapd exited with {status}; its log ends:\n{}", self.log_tail());
                }
                if Instant::now() > deadline {
                    self.stop();
                    bail!("slapd did not listen on {port} within {START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Kills slapd (as a crash or an outage would); data and ports are kept for [`Slapd::start`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether slapd is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// The last few KiB of `slapd.log`.
    fn log_tail(&self) -> String {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(&log[log.len().saturating_sub(4096)..]).into_owned()
    }

    /// Applies LDIF change records as the directory manager (`ldapmodify`).
    pub fn ldapmodify(&self, ldif: &str) -> anyhow::Result<()> {
        self.ldap_tool("ldapmodify", &[], Some(ldif))
    }

    /// Deletes an entry as the directory manager (`ldapdelete`).
    pub fn ldapdelete(&self, dn: &str) -> anyhow::Result<()> {
        self.ldap_tool("ldapdelete", &[dn], None)
    }

    fn ldap_tool(&self, tool: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
        let url = self.ldap_url();
        let mut child = Command::new(tool)
            .args(["-x", "-H", &url, "-D", LDAP_ADMIN_DN, "-w", LDAP_ADMIN_PASSWORD])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {tool}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.unwrap_or("").as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// An `[ldap]` section for this server: StartTLS on the plain port, the fixture CA, the
    /// service account, the people subtree with its ppolicy "enabled" filter, and the fixture's
    /// groups (`engineering`, `staff`, `posix-devs`, `admins`, `sales`; admins are `admins`).
    pub fn ldap_config(&self) -> LdapConfig {
        let group = |name: &str, dn: &str, member_attribute| LdapGroupConfig {
            name: name.to_owned(),
            dn: dn.to_owned(),
            member_attribute,
        };
        LdapConfig {
            servers: vec![self.ldap_url()],
            starttls: true,
            ca_file: Some(self.ca.ca_path.clone()),
            bind_dn: LDAP_SERVICE_DN.to_owned(),
            bind_password: Some(Secret::literal(LDAP_SERVICE_PASSWORD).expect("a non-empty secret")),
            base_dn: format!("ou=people,{LDAP_BASE_DN}"),
            connect_timeout: parley_config::Duration::from_secs(2),
            operation_timeout: parley_config::Duration::from_secs(3),
            health_check_interval: parley_config::Duration::from_millis(500),
            poll_interval: parley_config::Duration::from_millis(500),
            full_sync_interval: parley_config::Duration::from_secs(5),
            groups: vec![
                group(
                    "engineering",
                    "cn=engineering,ou=groups,dc=example,dc=com",
                    LdapMemberAttribute::Member,
                ),
                group(
                    "staff",
                    "cn=staff,ou=groups,dc=example,dc=com",
                    LdapMemberAttribute::UniqueMember,
                ),
                group(
                    "posix-devs",
                    "cn=posix-devs,ou=groups,dc=example,dc=com",
                    LdapMemberAttribute::MemberUid,
                ),
                group(
                    "admins",
                    "cn=admins,ou=groups,dc=example,dc=com",
                    LdapMemberAttribute::Member,
                ),
            ],
            admin_group: "admins".to_owned(),
            ..LdapConfig::default()
        }
    }

    /// An `[ldap]` section for the fixture's Active-Directory-like subtree: `sAMAccountName`
    /// localparts, the `userAccountControl` disabled bit, `memberOf` groups, over LDAPS.
    pub fn ad_config(&self) -> LdapConfig {
        LdapConfig {
            servers: vec![self.ldaps_url()],
            base_dn: format!("ou=ad,{LDAP_BASE_DN}"),
            user_filter: "(&(objectClass=parleyAdUser)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
                .to_owned(),
            localpart_attribute: "sAMAccountName".to_owned(),
            display_name_attribute: "displayName".to_owned(),
            department_attribute: "department".to_owned(),
            groups: vec![LdapGroupConfig {
                name: "sales".to_owned(),
                dn: "cn=Sales (EMEA),ou=Sales Team,ou=ad,dc=example,dc=com".to_owned(),
                member_attribute: LdapMemberAttribute::MemberOf,
            }],
            admin_group: String::new(),
            ..self.ldap_config()
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// `syncprov` adds the overlay that answers RFC 4533 sync searches (and lists the Sync Request
/// control in the root DSE).
fn slapd_conf(dir: &Path, ca: &TestCa, syncprov: bool) -> String {
    let schema = |name: &str| format!("include /etc/ldap/schema/{name}.schema\n");
    let fixtures = fixtures_dir();
    format!(
        "{core}{cosine}{inet}{nis}include {ad}\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         moduleload ppolicy\n\
         {syncprov_module}\
         pidfile {dir}/slapd.pid\n\
         TLSCACertificateFile {ca_file}\n\
         TLSCertificateFile {cert}\n\
         TLSCertificateKeyFile {key}\n\
         database mdb\n\
         suffix \"{LDAP_BASE_DN}\"\n\
         rootdn \"{LDAP_ADMIN_DN}\"\n\
         rootpw {LDAP_ADMIN_PASSWORD}\n\
         directory {dir}/db\n\
         maxsize 67108864\n\
         overlay ppolicy\n\
         {syncprov_overlay}\
         access to attrs=userPassword\n\
         \tby anonymous auth\n\
         \tby * none\n\
         access to *\n\
         \tby dn.exact=\"{LDAP_SERVICE_DN}\" read\n\
         \tby self read\n\
         \tby * none\n",
        core = schema("core"),
        cosine = schema("cosine"),
        inet = schema("inetorgperson"),
        nis = schema("nis"),
        ad = fixtures.join("parley-ad.schema").display(),
        dir = dir.display(),
        ca_file = ca.ca_path.display(),
        cert = ca.cert_path.display(),
        key = ca.key_path.display(),
        syncprov_module = if syncprov { "moduleload syncprov\n" } else { "" },
        syncprov_overlay = if syncprov { "overlay syncprov\n" } else { "" },
    )
}
