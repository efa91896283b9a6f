//! Scenario `chat`: every session sends `<message type='chat'/>` to random online peers, at a
//! fixed total rate or as fast as a bounded in-flight window allows. Bodies carry the sender,
//! a sequence number and the send time, so receivers measure end-to-end latency on the same clock.
//! After a drain period, lost = sent - received, exactly: a message counts as sent once its bytes
//! were flushed to the socket, and as received once a peer parsed it.
//! Given the server's PID, the server's CPU time over the send window divided by the messages
//! delivered in it gives its CPU cost per message, which moves far less between runs than the
//! rate at saturation does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWriteExt, WriteHalf};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::conn::Conn;
use crate::hist::Histogram;
use crate::run::{Context, bare_jid, establish, millis};
use crate::session::{XmppReader, send};
use crate::sys;
use crate::xml::{Element, Event, escape};

const BODY_PREFIX: &str = "parley-load ";

pub struct ChatOptions {
    pub sessions: usize,
    /// Messages per second over all sessions; `None` means as fast as the window allows.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub drain: Duration,
    /// In `max` mode, the most messages sent but not yet received, over all sessions.
    pub window: usize,
    pub concurrency: usize,
    /// Server process whose CPU time per delivered message is measured.
    pub server_pid: Option<u32>,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    send_failed: AtomicU64,
    received: AtomicU64,
    received_in_window: AtomicU64,
    bounced: AtomicU64,
    latency: Histogram,
}

/// Clock shared by senders and receivers: microseconds since the run started.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_us(self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

pub async fn run(ctx: Arc<Context>, options: ChatOptions) -> anyhow::Result<()> {
    anyhow::ensure!(options.sessions >= 2, "chat needs at least 2 sessions");
    let established = establish(&ctx, options.sessions, options.concurrency).await;
    let online = established.sessions.len();
    anyhow::ensure!(
        online >= 2,
        "only {online} sessions came online; see failures above"
    );
    let peers: Arc<Vec<String>> = Arc::new(
        established
            .sessions
            .iter()
            .map(|(i, _)| escape(&bare_jid(&ctx.accounts[*i], &ctx.target.domain)))
            .collect(),
    );
    let stats = Arc::new(Stats::default());
    let window = Arc::new(Semaphore::new(options.window.max(1)));
    let clock = Clock(Instant::now());
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let deadline = start + options.duration;
    let (close_tx, close_rx) = watch::channel(false);
    let mut receivers = JoinSet::new();
    let mut senders = JoinSet::new();
    for (position, (_, session)) in established.sessions.into_iter().enumerate() {
        let (reader, writer) = session.reader.split();
        receivers.spawn(receive(
            reader,
            stats.clone(),
            window.clone(),
            clock,
            deadline.into_std(),
        ));
        let sender = Sender {
            writer,
            me: position,
            peers: peers.clone(),
            stats: stats.clone(),
            window: window.clone(),
            clock,
        };
        let period = options
            .rate
            .map(|r| Duration::from_secs_f64(online as f64 / r.max(1e-3)));
        senders.spawn(sender.run(period, start, deadline, close_rx.clone()));
    }
    eprintln!("  .. {online} sessions chatting for {:?}", options.duration);
    let server_pid = options.server_pid.map(|pid| pid.to_string());
    let server_cpu = |pid: &Option<String>| pid.as_deref().and_then(|pid| sys::cpu_seconds(pid).ok());
    tokio::time::sleep_until(start).await;
    let cpu_at_start = server_cpu(&server_pid);
    tokio::time::sleep_until(deadline).await;
    let cpu_at_deadline = server_cpu(&server_pid);
    let drain_end = tokio::time::Instant::now() + options.drain;
    loop {
        let sent = stats.sent.load(Ordering::Relaxed);
        let arrived = stats.received.load(Ordering::Relaxed) + stats.bounced.load(Ordering::Relaxed);
        if arrived >= sent || tokio::time::Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = stats.sent.load(Ordering::Relaxed);
    let received = stats.received.load(Ordering::Relaxed);
    let bounced = stats.bounced.load(Ordering::Relaxed);
    let in_window = stats.received_in_window.load(Ordering::Relaxed);
    let seconds = options.duration.as_secs_f64().max(1e-9);
    let lost = sent.saturating_sub(received);
    let offered = options
        .rate
        .map_or(format!("max (window {})", options.window), |r| {
            format!("{r:.0} msg/s")
        });
    let h = &stats.latency;
    let cpu_us_per_msg = cpu_micros_per_message(cpu_at_start, cpu_at_deadline, in_window)
        .map_or_else(|| "na".to_owned(), |micros| format!("{micros:.1}"));

    println!("scenario: chat");
    println!("sessions online:  {online} of {}", options.sessions);
    println!("login failures:   {}", established.failures.total());
    established.failures.print();
    println!(
        "duration:         {seconds:.1} s (drain up to {:?})",
        options.drain
    );
    println!("offered rate:     {offered}");
    println!(
        "sent:             {sent} ({:.1} msg/s), send failures {}",
        sent as f64 / seconds,
        stats.send_failed.load(Ordering::Relaxed)
    );
    println!(
        "delivered:        {:.1} msg/s during the run; {received} received in total",
        in_window as f64 / seconds
    );
    println!(
        "latency ms:       p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        millis(h.quantile(0.5)),
        millis(h.quantile(0.99)),
        millis(h.quantile(0.999)),
        millis(h.max())
    );
    println!("server CPU:       {cpu_us_per_msg} us per delivered message");
    println!("bounced (error):  {bounced}");
    println!("lost:             {lost} (sent - received after drain)");
    println!(
        "RESULT scenario=chat online={online} sent={sent} received={received} lost={lost} \
         delivered_per_s={:.1} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} cpu_us_per_msg={cpu_us_per_msg}",
        in_window as f64 / seconds,
        millis(h.quantile(0.5)),
        millis(h.quantile(0.99)),
        millis(h.quantile(0.999))
    );

    let _ = close_tx.send(true);
    let closing = async {
        while senders.join_next().await.is_some() {}
        while receivers.join_next().await.is_some() {}
    };
    if tokio::time::timeout(Duration::from_secs(30), closing)
        .await
        .is_err()
    {
        eprintln!("  .. some sessions did not close within 30 s; dropping them");
    }
    Ok(())
}

struct Sender {
    writer: WriteHalf<Conn>,
    me: usize,
    peers: Arc<Vec<String>>,
    stats: Arc<Stats>,
    window: Arc<Semaphore>,
    clock: Clock,
}

impl Sender {
    async fn run(
        mut self,
        period: Option<Duration>,
        start: tokio::time::Instant,
        deadline: tokio::time::Instant,
        mut close: watch::Receiver<bool>,
    ) {
        let mut seq = 0u64;
        let mut ticker = period.map(|p| {
            // A random phase spreads the sessions' sends across the period.
            let phase = p.mul_f64(rand::random::<f64>());
            let mut t = tokio::time::interval_at(start + phase, p);
            t.set_missed_tick_behavior(MissedTickBehavior::Burst);
            t
        });
        let mut healthy = true;
        while healthy {
            let go = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => false,
                _ = async {
                    match ticker.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => {
                            if let Ok(permit) = self.window.acquire().await { permit.forget(); }
                        }
                    }
                } => true,
            };
            if !go {
                break;
            }
            seq += 1;
            healthy = self.send_one(seq).await;
        }
        let _ = close.wait_for(|closing| *closing).await;
        let _ = send(&mut self.writer, "</stream:stream>").await;
        let _ = self.writer.shutdown().await;
    }

    async fn send_one(&mut self, seq: u64) -> bool {
        let count = self.peers.len();
        // Uniform over the others: draw from count-1 and skip over ourselves.
        let mut peer = rand::random_range(0..count - 1);
        if peer >= self.me {
            peer += 1;
        }
        let stanza = format!(
            "<message type='chat' to='{}' id='m{seq}'><body>{BODY_PREFIX}{} {seq} {}</body></message>",
            self.peers[peer],
            self.me,
            self.clock.now_us()
        );
        match send(&mut self.writer, &stanza).await {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.stats.send_failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Microseconds of server CPU (all threads, user + system) per message delivered while it was
/// measured; `None` without both readings or without deliveries.
fn cpu_micros_per_message(before: Option<f64>, after: Option<f64>, delivered: u64) -> Option<f64> {
    let spent = after? - before?;
    (delivered > 0 && spent >= 0.0).then(|| spent * 1e6 / delivered as f64)
}

/// What a received message body says, if it is one of ours.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    sender: usize,
    seq: u64,
    sent_us: u64,
}

fn parse_probe(message: &Element) -> Option<Probe> {
    let body = message.child("body")?.text.strip_prefix(BODY_PREFIX)?;
    let mut fields = body.split(' ');
    let probe = Probe {
        sender: fields.next()?.parse().ok()?,
        seq: fields.next()?.parse().ok()?,
        sent_us: fields.next()?.parse().ok()?,
    };
    fields.next().is_none().then_some(probe)
}

async fn receive<R: AsyncRead + Unpin>(
    mut reader: XmppReader<R>,
    stats: Arc<Stats>,
    window: Arc<Semaphore>,
    clock: Clock,
    deadline: Instant,
) {
    // Server IQs are not answered here (the writer belongs to the sender); the servers under test
    // do not ping by default, and a run is short.
    while let Ok(event) = reader.next_event().await {
        let stanza = match event {
            Event::Element(stanza) => stanza,
            Event::StreamStart(_) => continue,
            Event::StreamEnd => break,
        };
        if stanza.name != "message" {
            continue;
        }
        let Some(probe) = parse_probe(&stanza) else {
            continue;
        };
        window.add_permits(1);
        if stanza.attr("type") == Some("error") {
            stats.bounced.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.received.fetch_add(1, Ordering::Relaxed);
        if Instant::now() <= deadline {
            stats.received_in_window.fetch_add(1, Ordering::Relaxed);
        }
        stats.latency.record(clock.now_us().saturating_sub(probe.sent_us));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_element;

    #[test]
    fn cpu_per_message_needs_both_readings_and_deliveries() {
        let per_message = cpu_micros_per_message(Some(10.0), Some(11.5), 20_000).unwrap();
        assert!((per_message - 75.0).abs() < 1e-9, "{per_message}");
        assert_eq!(cpu_micros_per_message(None, Some(11.5), 20_000), None);
        assert_eq!(cpu_micros_per_message(Some(10.0), None, 20_000), None);
        assert_eq!(cpu_micros_per_message(Some(10.0), Some(11.5), 0), None);
        assert_eq!(
            cpu_micros_per_message(Some(12.0), Some(11.5), 5),
            None,
            "a clock going back"
        );
    }

    #[test]
    fn probes_round_trip_and_foreign_bodies_are_ignored() {
        let m =
            parse_element(b"<message type='chat'><body>parley-load 3 17 123456</body></message>").unwrap();
        assert_eq!(
            parse_probe(&m),
            Some(Probe {
                sender: 3,
                seq: 17,
                sent_us: 123456
            })
        );
        for bad in [
            &b"<message><body>hello</body></message>"[..],
            b"<message><body>parley-load 3 17</body></message>",
            b"<message><body>parley-load 3 17 1 extra</body></message>",
            b"<message><body>parley-load x 17 1</body></message>",
            b"<message/>",
        ] {
            assert_eq!(parse_probe(&parse_element(bad).unwrap()), None);
        }
    }

    #[tokio::test]
    async fn receiver_counts_delivered_and_bounced() {
        let (mut server, client) = tokio::io::duplex(4096);
        let stats = Arc::new(Stats::default());
        let window = Arc::new(Semaphore::new(0));
        let clock = Clock(Instant::now());
        server
            .write_all(
                b"<stream:stream><message type='chat'><body>parley-load 0 1 0</body></message>\
                  <message type='error'><body>parley-load 0 2 0</body></message>\
                  <message><body>other</body></message><presence/></stream:stream>",
            )
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        receive(
            XmppReader::new(client),
            stats.clone(),
            window.clone(),
            clock,
            deadline,
        )
        .await;
        assert_eq!(stats.received.load(Ordering::Relaxed), 1);
        assert_eq!(stats.received_in_window.load(Ordering::Relaxed), 1);
        assert_eq!(stats.bounced.load(Ordering::Relaxed), 1);
        assert_eq!(stats.latency.count(), 1);
        assert_eq!(
            window.available_permits(),
            2,
            "each probe back frees one window slot"
        );
    }
}
