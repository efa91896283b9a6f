//! Scenario `idle`: open N full sessions, hold them, and measure the server's resident memory per
//! session (and our own, to show the tool is not the limit).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::run::{Context, establish};
use crate::session::{Session, send};
use crate::sys::{mib, own_rss_bytes, rss_bytes};
use crate::xml::{Element, Event, escape};

pub struct IdleOptions {
    pub sessions: usize,
    pub hold: Duration,
    pub server_pid: Option<u32>,
    pub concurrency: usize,
}

pub async fn run(ctx: Arc<Context>, options: IdleOptions) -> anyhow::Result<()> {
    let pid = options.server_pid.map(|p| p.to_string());
    let server_before = match &pid {
        Some(pid) => Some(rss_bytes(pid).map_err(|e| anyhow::anyhow!("reading RSS of pid {pid}: {e}"))?),
        None => None,
    };
    let own_before = own_rss_bytes();
    let established = establish(&ctx, options.sessions, options.concurrency).await;
    let count = established.sessions.len() as u64;
    let (stop_tx, stop_rx) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    let mut holders = JoinSet::new();
    for (_, session) in established.sessions {
        holders.spawn(hold(session, stop_rx.clone(), dropped.clone()));
    }
    eprintln!("  .. holding {count} sessions for {:?}", options.hold);
    let mut server_last = None;
    let mut server_max = 0;
    let hold_end = tokio::time::Instant::now() + options.hold;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while tokio::time::Instant::now() < hold_end {
        tick.tick().await;
        if let Some(pid) = &pid
            && let Ok(rss) = rss_bytes(pid)
        {
            server_last = Some(rss);
            server_max = server_max.max(rss);
        }
    }
    let own_holding = own_rss_bytes();
    let still_open = count - dropped.load(Ordering::Relaxed);

    println!("scenario: idle");
    println!("sessions requested:   {}", options.sessions);
    println!("sessions established: {count}");
    println!("sessions failed:      {}", established.failures.total());
    established.failures.print();
    println!("still open after hold: {still_open}");
    println!(
        "ramp: {:.1} s ({:.0} sessions/s)",
        established.elapsed.as_secs_f64(),
        count as f64 / established.elapsed.as_secs_f64().max(1e-9)
    );
    let mut per_session_kib = None;
    if let (Some(before), Some(last)) = (server_before, server_last) {
        let delta = last.saturating_sub(before);
        let per = if count > 0 {
            delta as f64 / count as f64 / 1024.0
        } else {
            0.0
        };
        per_session_kib = Some(per);
        println!("server RSS before:    {:.1} MiB", mib(before));
        println!(
            "server RSS holding:   {:.1} MiB (max {:.1} MiB)",
            mib(last),
            mib(server_max)
        );
        println!(
            "server RSS delta:     {:.1} MiB = {per:.1} KiB per session",
            mib(delta)
        );
    }
    let own_delta = own_holding.saturating_sub(own_before);
    println!(
        "load tool RSS:        {:.1} MiB ({:.1} KiB per session)",
        mib(own_holding),
        if count > 0 {
            own_delta as f64 / count as f64 / 1024.0
        } else {
            0.0
        }
    );
    println!(
        "RESULT scenario=idle established={count} failed={} kib_per_session={} server_rss_mib={} tool_rss_mib={:.1}",
        established.failures.total(),
        per_session_kib.map_or("na".into(), |v| format!("{v:.1}")),
        server_last.map_or("na".into(), |v| format!("{:.1}", mib(v))),
        mib(own_holding)
    );

    let _ = stop_tx.send(true);
    let closing = async { while holders.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), closing)
        .await
        .is_err()
    {
        eprintln!("  .. some sessions did not close within 30 s; dropping them");
    }
    Ok(())
}

/// Keeps one session open, answering server IQs (pings) so the server has no reason to drop it.
async fn hold(mut session: Session, mut stop: watch::Receiver<bool>, dropped: Arc<AtomicU64>) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                session.close(Duration::from_secs(5)).await;
                return;
            }
            event = session.reader.next_event() => match event {
                Ok(Event::Element(stanza)) => {
                    if let Some(reply) = answer_server_iq(&stanza)
                        && send(&mut session.reader.io, &reply).await.is_err()
                    {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                Ok(_) | Err(_) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// The reply a client owes to an IQ get/set: pong for XEP-0199, `service-unavailable` otherwise.
pub fn answer_server_iq(stanza: &Element) -> Option<String> {
    if stanza.name != "iq" || !matches!(stanza.attr("type"), Some("get" | "set")) {
        return None;
    }
    let id = escape(stanza.attr("id").unwrap_or_default());
    let to = stanza
        .attr("from")
        .map(|f| format!(" to='{}'", escape(f)))
        .unwrap_or_default();
    if stanza.child_ns("ping", "urn:xmpp:ping").is_some() {
        return Some(format!("<iq type='result' id='{id}'{to}/>"));
    }
    Some(format!(
        "<iq type='error' id='{id}'{to}><error type='cancel'><service-unavailable \
         xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_element;

    #[test]
    fn answers_pings_and_refuses_other_iqs() {
        let ping =
            parse_element(b"<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
                .unwrap();
        assert_eq!(
            answer_server_iq(&ping).unwrap(),
            "<iq type='result' id='p1' to='localhost'/>"
        );
        let other = parse_element(b"<iq type='set' id='a&apos;b'><query xmlns='x'/></iq>").unwrap();
        let reply = answer_server_iq(&other).unwrap();
        assert!(
            reply.contains("id='a&apos;b'") && reply.contains("service-unavailable"),
            "{reply}"
        );
        let result = parse_element(b"<iq type='result' id='r'/>").unwrap();
        assert_eq!(answer_server_iq(&result), None);
        let message = parse_element(b"<message type='get'/>").unwrap();
        assert_eq!(answer_server_iq(&message), None);
    }
}
