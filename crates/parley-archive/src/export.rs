//! eDiscovery export writers: JSON Lines, CSV, EML (one RFC 5322 file per message) and mbox.
//!
//! Every writer streams (one message in, bytes out) and hashes what it writes, so an export of
//! any size runs in constant memory and the manifest's SHA-256 values cost no second read.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ArchiveError;
use crate::entry::{Checkpoint, MessageRecord};
use crate::search::SearchFilter;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Jsonl,
    Csv,
    Eml,
    Mbox,
}

impl ExportFormat {
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
            ExportFormat::Eml => "eml",
            ExportFormat::Mbox => "mbox",
        }
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "jsonl" => Ok(ExportFormat::Jsonl),
            "csv" => Ok(ExportFormat::Csv),
            "eml" => Ok(ExportFormat::Eml),
            "mbox" => Ok(ExportFormat::Mbox),
            other => Err(format!("unknown export format {other:?} (jsonl, csv, eml, mbox)")),
        }
    }
}

/// One written file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Relative to the export directory.
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`: what was exported, how, and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportManifest {
    pub format: ExportFormat,
    pub actor: String,
    pub generated_at: String,
    pub filter: SearchFilter,
    pub messages: u64,
    /// RFC 3339 timestamps of the earliest and latest exported message.
    pub first_message_at: Option<String>,
    pub last_message_at: Option<String>,
    /// The data files; for EML, `SHA256SUMS` (which lists every .eml file, `sha256sum -c`
    /// format) stands for the many message files.
    pub files: Vec<FileDigest>,
    /// The chain head when the export started: compare with a later `verify`.
    pub checkpoint: Checkpoint,
}

/// Largest manifest [`ExportManifest::read`] takes: one lists a few files and a filter, so
/// anything this large is not one.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

impl ExportManifest {
    /// Reads a `manifest.json` an export wrote (untrusted: bounded, and checked to be one).
    pub fn read(path: &Path) -> Result<Self, ArchiveError> {
        let mut text = Vec::new();
        File::open(path)?
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut text)?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ArchiveError::Invalid(format!(
                "{} is larger than an export manifest can be ({MAX_MANIFEST_BYTES} bytes)",
                path.display()
            )));
        }
        serde_json::from_slice(&text).map_err(|error| {
            ArchiveError::Invalid(format!("{} is not an export manifest: {error}", path.display()))
        })
    }
}

/// Writes and hashes one file.
struct HashingFile {
    name: String,
    out: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl HashingFile {
    fn create(dir: &Path, name: &str) -> std::io::Result<Self> {
        let file = File::create(dir.join(name))?;
        Ok(Self {
            name: name.to_owned(),
            out: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    fn finish(mut self) -> std::io::Result<FileDigest> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(FileDigest {
            name: self.name,
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
        })
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One message as exported.
#[derive(Debug, Clone, Serialize)]
struct ExportLine<'a> {
    seq: u64,
    timestamp: String,
    timestamp_micros: i64,
    from: &'a str,
    to: &'a str,
    #[serde(rename = "type")]
    message_type: &'a str,
    id: Option<&'a str>,
    thread: Option<&'a str>,
    subject: Option<&'a str>,
    body: Option<&'a str>,
    stanza: &'a str,
}

enum Sink {
    Jsonl(HashingFile),
    Csv(Box<csv::Writer<HashingFile>>),
    Eml { dir: PathBuf, sums: HashingFile },
    Mbox(HashingFile),
}

/// A streaming export into one directory.
pub(crate) struct Exporter {
    sink: Sink,
    domain: String,
    pub(crate) messages: u64,
    pub(crate) first_ts: Option<i64>,
    pub(crate) last_ts: Option<i64>,
}

pub(crate) const CSV_HEADER: [&str; 9] = [
    "seq",
    "timestamp",
    "from",
    "to",
    "type",
    "id",
    "thread",
    "subject",
    "body",
];

impl Exporter {
    /// Creates the directory (which must be empty or absent) and the output file.
    pub(crate) fn create(dir: &Path, format: ExportFormat, domain: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        if std::fs::read_dir(dir)?.next().is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} is not empty", dir.display()),
            ));
        }
        let sink = match format {
            ExportFormat::Jsonl => Sink::Jsonl(HashingFile::create(dir, "messages.jsonl")?),
            ExportFormat::Csv => {
                // RFC 4180 §2: records end with CRLF.
                let mut writer = csv::WriterBuilder::new()
                    .terminator(csv::Terminator::CRLF)
                    .from_writer(HashingFile::create(dir, "messages.csv")?);
                writer.write_record(CSV_HEADER).map_err(std::io::Error::other)?;
                Sink::Csv(Box::new(writer))
            }
            ExportFormat::Eml => {
                let messages = dir.join("messages");
                std::fs::create_dir(&messages)?;
                Sink::Eml {
                    dir: messages,
                    sums: HashingFile::create(dir, "SHA256SUMS")?,
                }
            }
            ExportFormat::Mbox => Sink::Mbox(HashingFile::create(dir, "messages.mbox")?),
        };
        Ok(Self {
            sink,
            domain: domain.to_owned(),
            messages: 0,
            first_ts: None,
            last_ts: None,
        })
    }

    pub(crate) fn write(&mut self, seq: u64, ts: i64, message: &MessageRecord) -> std::io::Result<()> {
        self.messages += 1;
        self.first_ts.get_or_insert(ts);
        self.last_ts = Some(ts);
        match &mut self.sink {
            Sink::Jsonl(out) => {
                serde_json::to_writer(&mut *out, &export_line(seq, ts, message))?;
                out.write_all(b"\n")
            }
            Sink::Csv(out) => out
                .write_record([
                    seq.to_string().as_str(),
                    &rfc3339(ts),
                    &spreadsheet_safe(&message.from),
                    &spreadsheet_safe(&message.to),
                    message.message_type.as_deref().unwrap_or("normal"),
                    &spreadsheet_safe(message.id.as_deref().unwrap_or("")),
                    &spreadsheet_safe(message.thread.as_deref().unwrap_or("")),
                    &spreadsheet_safe(message.subject.as_deref().unwrap_or("")),
                    &spreadsheet_safe(message.body.as_deref().unwrap_or("")),
                ])
                .map_err(std::io::Error::other),
            Sink::Eml { dir, sums } => {
                let name = format!("{seq:020}.eml");
                let mut file = HashingFile::create(dir, &name)?;
                file.write_all(eml(seq, ts, message, &self.domain, "\r\n").as_bytes())?;
                let digest = file.finish()?;
                writeln!(sums, "{}  messages/{name}", digest.sha256)
            }
            Sink::Mbox(out) => {
                let from = crate::search::bare_of(&message.from);
                writeln!(out, "From {} {}", mbox_sender(&from), asctime(ts))?;
                out.write_all(eml(seq, ts, message, &self.domain, "\n").as_bytes())?;
                out.write_all(b"\n")
            }
        }
    }

    pub(crate) fn finish(self) -> std::io::Result<Vec<FileDigest>> {
        let digest = match self.sink {
            Sink::Jsonl(out) | Sink::Mbox(out) => out.finish()?,
            Sink::Csv(out) => out
                .into_inner()
                .map_err(|error| std::io::Error::other(error.to_string()))?
                .finish()?,
            Sink::Eml { sums, .. } => sums.finish()?,
        };
        Ok(vec![digest])
    }
}

fn export_line(seq: u64, ts: i64, message: &MessageRecord) -> ExportLine<'_> {
    ExportLine {
        seq,
        timestamp: rfc3339(ts),
        timestamp_micros: ts,
        from: &message.from,
        to: &message.to,
        message_type: message.message_type.as_deref().unwrap_or("normal"),
        id: message.id.as_deref(),
        thread: message.thread.as_deref(),
        subject: message.subject.as_deref(),
        body: message.body.as_deref(),
        stanza: &message.stanza,
    }
}

fn datetime(ts: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 in UTC with microseconds.
pub fn rfc3339(ts: i64) -> String {
    datetime(ts)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn rfc2822(ts: i64) -> String {
    datetime(ts)
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

fn asctime(ts: i64) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    datetime(ts).format(&format).unwrap_or_default()
}

/// The mbox separator's sender: one word, no spaces.
fn mbox_sender(bare: &str) -> String {
    let cleaned: String = bare
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect();
    if cleaned.is_empty() {
        "unknown".into()
    } else {
        cleaned
    }
}

/// Printable ASCII of a length that fits a header line.
fn is_plain(value: &str) -> bool {
    value.len() <= 900 && value.bytes().all(|byte| (0x20..0x7f).contains(&byte))
}

/// A header value safe to write: printable ASCII as is, anything else (non-ASCII, control
/// characters that could inject headers, very long values) as RFC 2047 encoded words.
fn header_value(value: &str, newline: &str) -> String {
    if is_plain(value) {
        return value.to_owned();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in value.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|word| {
            format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(word)
            )
        })
        .collect::<Vec<_>>()
        .join(&format!("{newline} "))
}

/// An address header: the bare JID as the address when it looks like one. Otherwise the JID is
/// the display name of a placeholder address: a quoted string (RFC 5322 §3.2.4) when it is plain
/// ASCII, so that specials such as `,` cannot split it into two addresses, else encoded words.
fn address(jid: &str, newline: &str) -> String {
    let bare = crate::search::bare_of(jid);
    let safe = bare.contains('@')
        && bare
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !"<>()[],;:\\\"".contains(c));
    if safe {
        return format!("<{bare}>");
    }
    if is_plain(&bare) {
        let quoted = bare.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{quoted}\" <unknown@invalid>")
    } else {
        format!("{} <unknown@invalid>", header_value(&bare, newline))
    }
}

/// One chat message as an RFC 5322 message (RFC 6532 allows the UTF-8 addresses).
pub(crate) fn eml(seq: u64, ts: i64, message: &MessageRecord, domain: &str, newline: &str) -> String {
    let from_bare = crate::search::bare_of(&message.from);
    let to_bare = crate::search::bare_of(&message.to);
    let subject = message
        .subject
        .clone()
        .unwrap_or_else(|| format!("Chat message from {from_bare} to {to_bare}"));
    let mut headers = vec![
        ("From", address(&message.from, newline)),
        ("To", address(&message.to, newline)),
        ("Date", rfc2822(ts)),
        ("Subject", header_value(&subject, newline)),
        (
            "Message-ID",
            format!("<parley-{seq}@{}>", header_value(domain, newline)),
        ),
        ("X-Parley-Seq", seq.to_string()),
        ("X-XMPP-From", header_value(&message.from, newline)),
        ("X-XMPP-To", header_value(&message.to, newline)),
        (
            "X-XMPP-Type",
            header_value(message.message_type.as_deref().unwrap_or("normal"), newline),
        ),
    ];
    if let Some(id) = &message.id {
        headers.push(("X-XMPP-Id", header_value(id, newline)));
    }
    if let Some(thread) = &message.thread {
        headers.push(("X-XMPP-Thread", header_value(thread, newline)));
    }
    headers.push(("MIME-Version", "1.0".into()));
    headers.push(("Content-Type", "text/plain; charset=utf-8".into()));
    headers.push(("Content-Transfer-Encoding", "base64".into()));
    let mut out = String::new();
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(&value);
        out.push_str(newline);
    }
    out.push_str(newline);
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(message.body.as_deref().unwrap_or("").as_bytes());
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push_str(newline);
    }
    out
}

/// A CSV cell a spreadsheet will not run: text starting with `=`, `+`, `-`, `@`, a tab or a
/// carriage return is a formula to Excel and its kin (CSV injection), so it gets a leading `'`,
/// which they show as text. The JSON Lines, EML and mbox exports keep every byte as it was.
fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_is_read_back_and_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = ExportManifest {
            format: ExportFormat::Jsonl,
            actor: "admin".into(),
            generated_at: "2026-11-23T08:00:00Z".into(),
            filter: SearchFilter::default(),
            messages: 0,
            first_message_at: None,
            last_message_at: None,
            files: Vec::new(),
            checkpoint: Checkpoint::EMPTY,
        };
        let good = dir.path().join("manifest.json");
        std::fs::write(&good, serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert_eq!(ExportManifest::read(&good).unwrap(), manifest);

        let not_json = dir.path().join("notes.txt");
        std::fs::write(&not_json, "not a manifest").unwrap();
        let error = ExportManifest::read(&not_json).unwrap_err();
        assert!(
            matches!(&error, ArchiveError::Invalid(why) if why.contains("is not an export manifest")),
            "{error}"
        );
        let huge = dir.path().join("huge.json");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_MANIFEST_BYTES + 1)
            .unwrap();
        let error = ExportManifest::read(&huge).unwrap_err();
        assert!(
            matches!(&error, ArchiveError::Invalid(why) if why.contains("larger than")),
            "{error}"
        );
        assert!(matches!(
            ExportManifest::read(&dir.path().join("missing.json")),
            Err(ArchiveError::Io(_))
        ));
    }

    #[test]
    fn csv_cells_that_spreadsheets_would_run_are_quoted_as_text() {
        for formula in [
            "=HYPERLINK(\"http://x/\",\"ok\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(spreadsheet_safe(formula), format!("'{formula}"));
        }
        for text in ["hello", "a=b", "", "1-2", "'quoted"] {
            assert_eq!(spreadsheet_safe(text), text);
        }
    }

    fn message(body: &str) -> MessageRecord {
        MessageRecord {
            from: "alice@example.com/phone".into(),
            to: "bob@example.com".into(),
            id: Some("id\r\nBcc: evil@example.org".into()),
            message_type: Some("chat".into()),
            thread: Some("t-1".into()),
            subject: Some("Grüße aus Köln".into()),
            body: Some(body.into()),
            stanza: "<message/>".into(),
        }
    }

    #[test]
    fn a_jid_with_address_specials_stays_one_address() {
        for jid in [
            "a,b@example.com/r",
            "\"quoted\\\"@example.com",
            "=?x?=,evil@example.com",
        ] {
            let mut record = message("hi");
            record.from = jid.to_owned();
            let text = eml(1, 1_751_364_000_000_000, &record, "example.com", "\r\n");
            let parsed = mail_parser::MessageParser::default()
                .parse(text.as_bytes())
                .unwrap();
            let from = parsed.from().expect("a From header");
            assert_eq!(from.iter().count(), 1, "{jid}: {text}");
            let only = from.first().unwrap();
            assert_eq!(only.address(), Some("unknown@invalid"), "{jid}");
            assert_eq!(only.name(), Some(crate::search::bare_of(jid).as_str()), "{jid}");
        }
    }

    #[test]
    fn eml_parses_with_a_real_mail_parser_and_resists_header_injection() {
        let text = eml(
            42,
            1_751_364_000_000_000,
            &message("Hallo Bob,\nwie geht's? 😀"),
            "example.com",
            "\r\n",
        );
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(parsed.subject(), Some("Grüße aus Köln"));
        assert_eq!(parsed.body_text(0).as_deref(), Some("Hallo Bob,\nwie geht's? 😀"));
        let from = parsed
            .from()
            .and_then(|from| from.first())
            .and_then(|addr| addr.address());
        assert_eq!(from, Some("alice@example.com"));
        assert_eq!(parsed.message_id(), Some("parley-42@example.com"));
        assert!(
            parsed.bcc().is_none(),
            "a CR/LF in the stanza id must not add a header"
        );
        assert_eq!(parsed.date().map(|date| date.to_timestamp()), Some(1_751_364_000));
    }

    #[test]
    fn header_values_encode_non_ascii_and_long_text() {
        assert_eq!(header_value("plain text", "\r\n"), "plain text");
        let encoded = header_value(&"ü".repeat(100), "\r\n");
        assert!(encoded.starts_with("=?utf-8?b?"));
        assert!(encoded.lines().all(|line| line.len() < 78), "{encoded}");
        assert!(!encoded.contains('ü'));
    }

    #[test]
    fn asctime_has_the_mbox_separator_form() {
        assert_eq!(asctime(1_751_364_000_000_000), "Tue Jul  1 10:00:00 2025");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn export_refuses_a_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), b"x").unwrap();
        let refused = Exporter::create(dir.path(), ExportFormat::Jsonl, "example.com");
        assert!(refused.is_err());
        assert_eq!("csv".parse::<ExportFormat>(), Ok(ExportFormat::Csv));
        assert!("pdf".parse::<ExportFormat>().is_err());
    }
}
