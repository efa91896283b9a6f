//! `parley directory check`: connects to the configured directory with the server's own
//! settings and prints what Parley would see, so an admin can debug a mapping without logs.

use std::io::Write;

use anyhow::Context;
use parley_config::{Config, DirectoryBackend};
use parley_directory::{Directory, LdapDirectory, Person, StaticDirectory};

/// Prints the directory report to `out`. Fails when the directory can't be read.
pub async fn run(config: &Config, user: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    let domain = &config.server.domain;
    match config.directory.backend {
        DirectoryBackend::Static => {
            let path = config.static_directory_path();
            let directory = StaticDirectory::open(&path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            let people = directory.people().await?;
            writeln!(
                out,
                "static directory {}: {} user(s)",
                path.display(),
                people.len()
            )?;
            for person in &people {
                writeln!(out, "  {}", person_line(person, domain))?;
            }
            if let Some(name) = user {
                match directory.person(name).await? {
                    Some(person) => {
                        print_person(out, &person, domain)?;
                        print_vcard(out, &directory, &person, domain).await?;
                    }
                    None => writeln!(out, "user {name:?}: not found")?,
                }
            }
        }
        DirectoryBackend::Ldap => check_ldap(config, user, out).await?,
    }
    Ok(())
}

async fn check_ldap(config: &Config, user: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    let domain = &config.server.domain;
    let ldap = &config.ldap;
    let directory = LdapDirectory::new(ldap).context("preparing the LDAP connections")?;
    writeln!(
        out,
        "base {} (scope {:?}), user filter {}",
        ldap.base_dn, ldap.scope, ldap.user_filter
    )?;
    let read = directory.sync().await;
    writeln!(out, "servers:")?;
    for (url, up) in directory.server_status() {
        writeln!(out, "  {url}: {}", if up { "up" } else { "DOWN" })?;
    }
    let snapshot = read.context("reading the directory")?;
    writeln!(out, "users matching the filter: {}", snapshot.people.len())?;
    for (localpart, person) in &snapshot.people {
        let dn = snapshot.dns.get(localpart).map_or("", String::as_str);
        writeln!(out, "  {}  [{dn}]", person_line(person, domain))?;
    }
    writeln!(out, "groups: {}", snapshot.groups.len())?;
    for (name, members) in &snapshot.groups {
        let admin = if *name == ldap.admin_group {
            " (admins)"
        } else {
            ""
        };
        writeln!(
            out,
            "  {name}{admin}: {} member(s): {}",
            members.len(),
            members.join(", ")
        )?;
    }
    writeln!(out, "entries without an account: {}", snapshot.problems.len())?;
    for problem in &snapshot.problems {
        writeln!(out, "  {problem}")?;
    }
    if let Some(name) = user {
        match directory.lookup(name).await.context("looking the user up")? {
            None => writeln!(
                out,
                "user {name:?}: no enabled entry matches (filter {})",
                parley_directory::ldap::user_login_filter(ldap, name)
            )?,
            Some(found) => {
                writeln!(out, "user {name:?}: {}", found.dn)?;
                print_person(out, &found.person, domain)?;
                print_vcard(out, &directory, &found.person, domain).await?;
                writeln!(out, "  attributes read:")?;
                for (attribute, values) in &found.attributes {
                    writeln!(out, "    {attribute}: {}", values.join(" | "))?;
                }
            }
        }
    }
    Ok(())
}

/// The vCard clients get for this person (XEP-0054), built exactly as the server builds it; a
/// photo's data is shortened to its size.
async fn print_vcard(
    out: &mut impl Write,
    directory: &dyn parley_directory::Directory,
    person: &Person,
    domain: &str,
) -> anyhow::Result<()> {
    let profile = directory.profile(&person.localpart).await?.unwrap_or_default();
    let jid =
        parley_proto::BareJid::new(&format!("{}@{domain}", person.localpart)).context("the user's JID")?;
    let vcard = parley_im::directory_vcard::vcard_of(person, &profile, &jid, None);
    let mut xml = Vec::new();
    parley_proto::writer::write_element(&vcard, &mut xml);
    let mut text = String::from_utf8_lossy(&xml).into_owned();
    if let (Some(start), Some(end)) = (text.find("<BINVAL>"), text.find("</BINVAL>")) {
        let length = end - start - "<BINVAL>".len();
        text.replace_range(
            start + "<BINVAL>".len()..end,
            &format!("…{length} bytes of base64…"),
        );
    }
    writeln!(out, "  vCard, as clients see it:\n    {text}")?;
    Ok(())
}

fn person_line(person: &Person, domain: &str) -> String {
    let mut line = format!("{}@{domain}", person.localpart);
    if let Some(name) = &person.display_name {
        line.push_str(&format!("  \"{name}\""));
    }
    if !person.groups.is_empty() {
        line.push_str(&format!("  groups: {}", person.groups.join(", ")));
    }
    if person.admin {
        line.push_str("  (admin)");
    }
    line
}

fn print_person(out: &mut impl Write, person: &Person, domain: &str) -> std::io::Result<()> {
    let show = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    writeln!(out, "  jid: {}@{domain}", person.localpart)?;
    writeln!(out, "  display name: {}", show(&person.display_name))?;
    writeln!(out, "  email: {}", show(&person.email))?;
    writeln!(out, "  department: {}", show(&person.department))?;
    writeln!(out, "  title: {}", show(&person.title))?;
    writeln!(out, "  phone: {}", show(&person.phone))?;
    writeln!(out, "  groups: {}", person.groups.join(", "))?;
    writeln!(out, "  admin: {}", if person.admin { "yes" } else { "no" })
}
