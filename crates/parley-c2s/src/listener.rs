//! Accept loops: per-IP connection limits and one task per connection.

use crate::session::{C2sContext, ListenerMode, handle_connection};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Counts open connections per peer address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

struct PerIpGuard {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpGuard> {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = table.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PerIpGuard {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = table.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections on `listener` until the context's shutdown token fires, then waits
/// for every connection it started to finish (each sends `system-shutdown` and closes).
/// The caller binds the listener, so tests can use port 0.
pub async fn serve(listener: TcpListener, mode: ListenerMode, ctx: Arc<C2sContext>) {
    let per_ip = Arc::new(PerIp::default());
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(guard) = per_ip.admit(peer.ip(), ctx.settings.max_connections_per_ip) else {
            tracing::info!(%peer, "connection refused: too many from this address");
            drop(tcp);
            continue;
        };
        let ctx = ctx.clone();
        let connection = async move {
            handle_connection(tcp, peer, mode, ctx).await;
            drop(guard);
        };
        tracker.spawn(connection);
    }
    tracker.close();
    tracker.wait().await;
}
