//! Scenario `roster-login`: accounts sit in shared roster groups of G members (account i is in
//! group `g{i / G + 1}`, set up by the server's own means: see bench/run.sh). N sessions log in,
//! fetch their roster (G - 1 contacts) and send initial presence, then stay online, so each
//! login fans presence out to the group members already online and probes them. Reports the
//! login rate, the roster round trip, the time until every member has seen every other
//! member's presence, and the server CPU time spent per login (the fan-out cost).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::conn::Conn;
use crate::hist::Histogram;
use crate::run::{Context, Failures, bare_jid, millis};
use crate::session::{self, Session, SessionError, XmppReader, send};
use crate::sys::cpu_seconds;
use crate::xml::{Element, Event};

const ROSTER_GET: &str = "<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>";

pub struct RosterOptions {
    pub sessions: usize,
    pub group_size: usize,
    pub concurrency: usize,
    /// After the last login, how long to wait for the presence fan-out to complete.
    pub settle: Duration,
    pub server_pid: Option<u32>,
}

#[derive(Default)]
struct Stats {
    login: Histogram,
    roster: Histogram,
    roster_items: AtomicU64,
    presences: AtomicU64,
}

/// Presences every member should receive from the others: G(G-1) per full group, plus the
/// partial last group.
pub fn expected_presences(sessions: usize, group_size: usize) -> u64 {
    let group_size = group_size.max(1) as u64;
    let sessions = sessions as u64;
    let full = sessions / group_size;
    let rest = sessions % group_size;
    full * group_size * (group_size - 1) + rest * rest.saturating_sub(1)
}

pub async fn run(ctx: Arc<Context>, options: RosterOptions) -> anyhow::Result<()> {
    anyhow::ensure!(options.group_size >= 2, "--group-size must be at least 2");
    anyhow::ensure!(
        ctx.accounts.len() >= options.sessions,
        "need {} accounts",
        options.sessions
    );
    let pid = options.server_pid.map(|p| p.to_string());
    let cpu_before = pid.as_deref().and_then(|p| cpu_seconds(p).ok());
    let stats = Arc::new(Stats::default());
    let failures = Arc::new(Failures::default());
    let gate = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut logins = JoinSet::new();
    for index in 0..options.sessions {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (ctx, stats, failures, stop) = (ctx.clone(), stats.clone(), failures.clone(), stop_rx.clone());
        logins.spawn(async move {
            let result = login_with_roster(&ctx, index, &stats).await;
            drop(permit);
            match result {
                Ok(session) => {
                    let me = bare_jid(&ctx.accounts[index], &ctx.target.domain);
                    count_presences(session.reader, me, stats, stop).await;
                }
                Err(error) => failures.add(&error),
            }
        });
    }
    // Every login has a permit once all permits are back.
    let _all_done = gate
        .acquire_many(options.concurrency.max(1) as u32)
        .await
        .map_err(|_| anyhow::anyhow!("login gate closed"))?;
    let login_elapsed = started.elapsed();
    let online = stats.login.count();
    let expected = expected_presences(online as usize, options.group_size);
    let settle_end = Instant::now() + options.settle;
    while stats.presences.load(Ordering::Relaxed) < expected && Instant::now() < settle_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settled = started.elapsed();
    let received = stats.presences.load(Ordering::Relaxed);
    let cpu_used = match (pid.as_deref(), cpu_before) {
        (Some(p), Some(before)) => cpu_seconds(p).ok().map(|after| (after - before).max(0.0)),
        _ => None,
    };
    let login_rate = online as f64 / login_elapsed.as_secs_f64().max(1e-9);
    let items_avg = stats.roster_items.load(Ordering::Relaxed) as f64 / online.max(1) as f64;
    let cpu_ms_per_login = cpu_used.map(|s| s * 1000.0 / online.max(1) as f64);

    println!("scenario: roster-login");
    println!(
        "sessions: {} requested, {online} online; group size {}",
        options.sessions, options.group_size
    );
    println!("login failures:   {}", failures.total());
    failures.print();
    println!(
        "logins:           {:.2} s ({login_rate:.1} logins/s with roster and presence)",
        login_elapsed.as_secs_f64()
    );
    println!(
        "login latency ms: p50 {:.2}  p99 {:.2}   roster get ms: p50 {:.2}  p99 {:.2}",
        millis(stats.login.quantile(0.5)),
        millis(stats.login.quantile(0.99)),
        millis(stats.roster.quantile(0.5)),
        millis(stats.roster.quantile(0.99))
    );
    println!(
        "roster items:     {items_avg:.1} per user (expected {})",
        options.group_size - 1
    );
    println!(
        "presences:        {received} received of {expected} expected; all in by {:.2} s{}",
        settled.as_secs_f64(),
        if received < expected {
            " (settle timeout)"
        } else {
            ""
        }
    );
    if let (Some(cpu), Some(per)) = (cpu_used, cpu_ms_per_login) {
        println!("server CPU:       {cpu:.2} s = {per:.2} ms per login");
    }
    println!(
        "RESULT scenario=roster-login online={online} failed={} logins_per_s={login_rate:.1} \
         login_p50_ms={:.2} login_p99_ms={:.2} roster_p50_ms={:.2} roster_p99_ms={:.2} \
         roster_items={items_avg:.1} presences_missing={} settle_s={:.2} cpu_ms_per_login={}",
        failures.total(),
        millis(stats.login.quantile(0.5)),
        millis(stats.login.quantile(0.99)),
        millis(stats.roster.quantile(0.5)),
        millis(stats.roster.quantile(0.99)),
        expected.saturating_sub(received),
        settled.as_secs_f64(),
        cpu_ms_per_login.map_or("na".into(), |v| format!("{v:.2}"))
    );

    let _ = stop_tx.send(true);
    let closing = async { while logins.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), closing)
        .await
        .is_err()
    {
        eprintln!("  .. some sessions did not close within 30 s; dropping them");
    }
    Ok(())
}

/// Login, then the roster round trip (timed apart), then initial presence.
async fn login_with_roster(ctx: &Context, index: usize, stats: &Stats) -> Result<Session, SessionError> {
    let t0 = Instant::now();
    let mut session = session::login(&ctx.target, &ctx.accounts[index]).await?;
    let t1 = Instant::now();
    let reply = session::iq(
        &ctx.target,
        &mut session.reader,
        "roster get",
        ROSTER_GET,
        "roster1",
    )
    .await?;
    stats.roster.record(t1.elapsed().as_micros() as u64);
    stats
        .roster_items
        .fetch_add(roster_items(&reply), Ordering::Relaxed);
    send(&mut session.reader.io, "<presence/>").await?;
    stats.login.record(t0.elapsed().as_micros() as u64);
    Ok(session)
}

fn roster_items(reply: &Element) -> u64 {
    reply.child_ns("query", "jabber:iq:roster").map_or(0, |q| {
        q.children.iter().filter(|c| c.name == "item").count() as u64
    })
}

/// Whether a stanza is an available presence from someone other than `me` (bare JID).
fn is_contact_presence(stanza: &Element, me: &str) -> bool {
    if stanza.name != "presence" || stanza.attr("type").is_some() {
        return false;
    }
    let from = stanza.attr("from").unwrap_or_default();
    let bare = from.split_once('/').map_or(from, |(bare, _)| bare);
    !bare.is_empty() && bare != me
}

/// Counts contact presences until told to stop, answering pings so the session stays up.
async fn count_presences(
    mut reader: XmppReader<Conn>,
    me: String,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                Session { reader }.close(Duration::from_secs(5)).await;
                return;
            }
            event = reader.next_event() => match event {
                Ok(Event::Element(stanza)) => {
                    if is_contact_presence(&stanza, &me) {
                        stats.presences.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(reply) = crate::idle::answer_server_iq(&stanza)
                        && send(&mut reader.io, &reply).await.is_err()
                    {
                        return;
                    }
                }
                Ok(_) | Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_element;

    #[test]
    fn expected_presences_cover_full_and_partial_groups() {
        assert_eq!(expected_presences(1000, 500), 2 * 500 * 499);
        assert_eq!(expected_presences(1200, 500), 2 * 500 * 499 + 200 * 199);
        assert_eq!(expected_presences(1, 500), 0);
        assert_eq!(expected_presences(0, 500), 0);
    }

    #[test]
    fn only_available_presence_from_others_counts() {
        let me = "user1@localhost";
        let other = parse_element(b"<presence from='user2@localhost/load'/>").unwrap();
        let own = parse_element(b"<presence from='user1@localhost/load'/>").unwrap();
        let gone = parse_element(b"<presence type='unavailable' from='user2@localhost/x'/>").unwrap();
        let anonymous = parse_element(b"<presence/>").unwrap();
        let message = parse_element(b"<message from='user2@localhost/x'/>").unwrap();
        assert!(is_contact_presence(&other, me));
        assert!(!is_contact_presence(&own, me));
        assert!(!is_contact_presence(&gone, me));
        assert!(!is_contact_presence(&anonymous, me));
        assert!(!is_contact_presence(&message, me));
    }

    #[test]
    fn roster_items_are_counted() {
        let reply = parse_element(
            b"<iq type='result'><query xmlns='jabber:iq:roster'><item jid='a@x'/><item jid='b@x'/>\
              </query></iq>",
        )
        .unwrap();
        assert_eq!(roster_items(&reply), 2);
        let empty = parse_element(b"<iq type='result'/>").unwrap();
        assert_eq!(roster_items(&empty), 0);
    }
}
