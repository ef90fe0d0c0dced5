//! One active subscriber among several: the lease.
//!
//! Subscriber instances that share a PostgreSQL store (several replicas, for availability)
//! take turns: the one holding the store's lease reads the stream and publishes; the others
//! wait as standbys and take over when the holder stops renewing. The store's clock decides
//! when a lease has run out, so instances on machines whose clocks differ still agree.
//!
//! The rule that keeps two instances from publishing at once: the holder renews every third of
//! the lease and, before every publish and checkpoint, checks its [`Fence`] — valid until a
//! lease length, minus a fifth, after the moment it *sent* its last successful renewal. That
//! renewal was written after it was sent, so the store's expiry is later still: the holder
//! stops publishing before any standby can take the lease. Each taking of the lease raises its
//! epoch, and the checkpoint is written only while the writer's epoch is the lease's
//! ([`Store::save_checkpoint_as`]), so a holder that was paused past its lease (a stopped
//! process, a long pause) cannot move the checkpoint the new holder reads. What it had handed to
//! Kafka before it stopped may reach the topic after the new holder starts: those events are the
//! ones after the last saved checkpoint, which the new holder publishes again — the
//! at-least-once window of the subscriber (docs/subscriber.md).
//!
//! With SQLite (one machine, where a deployment runs one subscriber) no lease is kept.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::{Connections, LeaseRole, SubscriberLease};
use crate::store::{Lease, LeaseAnswer, LeaseClaim, Store, StoreError};

/// What is leased, by whom, for how long.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The lease's name: one per stream the instances compete for.
    pub name: String,
    /// This instance.
    pub instance: String,
    pub ttl: Duration,
}

impl LeaseSettings {
    /// The lease of the subscribers of `topic`, whichever transport they read it with.
    pub fn for_topic(topic: &str, instance: String, ttl: Duration) -> LeaseSettings {
        LeaseSettings {
            name: format!("subscriber:{topic}"),
            instance,
            ttl,
        }
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How long after a renewal was sent the holder still counts on it.
    fn trusted_for(&self) -> Duration {
        self.ttl - self.ttl / 5
    }
}

/// This instance no longer holds the lease: it must not publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this instance ({holder}) no longer holds lease {name} (epoch {epoch}): {why}; it stops \
     publishing, and another subscriber may stream"
)]
pub struct LeaseLost {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
    pub why: String,
}

/// The holder's right to publish, checked before every publish and checkpoint.
#[derive(Debug)]
pub struct Fence {
    claim: LeaseClaim,
    valid_until: Mutex<Instant>,
    lost: AtomicBool,
    why: Mutex<String>,
}

impl Fence {
    fn new(claim: LeaseClaim, valid_until: Instant) -> Fence {
        Fence {
            claim,
            valid_until: Mutex::new(valid_until),
            lost: AtomicBool::new(false),
            why: Mutex::new(String::new()),
        }
    }

    /// Ok while the lease is surely this instance's.
    pub fn check(&self) -> Result<(), LeaseLost> {
        if self.lost.load(Ordering::SeqCst) {
            let why = self.why.lock().expect("not poisoned").clone();
            return Err(self.lost_because(why));
        }
        if Instant::now() >= *self.valid_until.lock().expect("not poisoned") {
            return Err(self.lost_because("it could not be renewed in time".into()));
        }
        Ok(())
    }

    /// What the store checks the holder's writes against.
    pub fn claim(&self) -> &LeaseClaim {
        &self.claim
    }

    fn extend(&self, until: Instant) {
        let mut valid_until = self.valid_until.lock().expect("not poisoned");
        if until > *valid_until {
            *valid_until = until;
        }
    }

    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().expect("not poisoned")
    }

    fn lose(&self, why: String) {
        *self.why.lock().expect("not poisoned") = why;
        self.lost.store(true, Ordering::SeqCst);
    }

    fn lost_because(&self, why: String) -> LeaseLost {
        LeaseLost {
            name: self.claim.name.clone(),
            holder: self.claim.holder.clone(),
            epoch: self.claim.epoch,
            why,
        }
    }
}

/// The lease, held: renewed in the background until it is released or lost.
pub struct Held {
    fence: Arc<Fence>,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Held {
    pub fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// Turns true when the lease is lost: the stream must stop.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stops renewing and lets the lease go at once, so a standby takes over without waiting
    /// for it to run out (a clean shutdown).
    pub async fn release(self, store: &dyn Store) {
        self.keeper.abort();
        if self.fence.check().is_ok()
            && let Err(error) = store.release_lease(self.fence.claim()).await
        {
            tracing::warn!(%error, "the subscriber lease could not be released; it runs out by itself");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Waits until this instance holds the lease, standing by while another does; `None` when
/// `shutdown` turns true first. The board shows which instance streams throughout.
pub async fn acquire(
    store: Arc<dyn Store>,
    settings: &LeaseSettings,
    connections: &Connections,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Held>, StoreError> {
    let mut said_standby = false;
    loop {
        if *shutdown.borrow() {
            return Ok(None);
        }
        let asked = Instant::now();
        let wait = match store
            .take_lease(&settings.name, &settings.instance, settings.ttl)
            .await
        {
            Ok(LeaseAnswer::Granted(lease)) => {
                tracing::info!(
                    instance = %settings.instance,
                    epoch = lease.epoch,
                    "this subscriber holds the lease: it streams"
                );
                return Ok(Some(keep(store, settings, connections, lease, asked)));
            }
            Ok(LeaseAnswer::HeldBy(lease)) => {
                if !said_standby {
                    tracing::info!(
                        instance = %settings.instance,
                        holder = %lease.holder,
                        epoch = lease.epoch,
                        "another subscriber holds the lease: this one stands by"
                    );
                    said_standby = true;
                }
                connections.subscriber(status(settings, LeaseRole::Standby, Some(&lease)));
                // Ask again as it runs out: a holder that stopped renewing is replaced within
                // the lease's length.
                lease
                    .remaining()
                    .clamp(Duration::from_millis(50), settings.renew_every())
                    + Duration::from_millis(20)
            }
            Err(error) => {
                tracing::warn!(%error, "the subscriber lease cannot be read; trying again");
                settings.renew_every()
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(None),
        }
    }
}

fn status(settings: &LeaseSettings, role: LeaseRole, lease: Option<&Lease>) -> SubscriberLease {
    SubscriberLease {
        instance: settings.instance.clone(),
        role,
        epoch: lease.map(|l| l.epoch),
        holder: lease.map(|l| l.holder.clone()),
        expires_at: lease.map(|l| l.expires_at),
    }
}

/// The holder's board entry when no lease is kept.
pub fn unleased(instance: String) -> SubscriberLease {
    SubscriberLease {
        instance,
        role: LeaseRole::Unleased,
        epoch: None,
        holder: None,
        expires_at: None,
    }
}

/// Starts renewing a lease taken at `asked`.
fn keep(
    store: Arc<dyn Store>,
    settings: &LeaseSettings,
    connections: &Connections,
    lease: Lease,
    asked: Instant,
) -> Held {
    let fence = Arc::new(Fence::new(lease.claim(), asked + settings.trusted_for()));
    connections.subscriber(status(settings, LeaseRole::Active, Some(&lease)));
    let (lost_tx, lost) = watch::channel(false);
    let keeper = tokio::spawn(renew(
        store,
        settings.clone(),
        connections.clone(),
        fence.clone(),
        lost_tx,
    ));
    Held {
        fence,
        lost,
        keeper,
    }
}

/// Renews every third of the lease until it is lost: refused (another instance took it) or not
/// renewed before the fence's time ran out.
async fn renew(
    store: Arc<dyn Store>,
    settings: LeaseSettings,
    connections: Connections,
    fence: Arc<Fence>,
    lost: watch::Sender<bool>,
) {
    let mut next = Instant::now() + settings.renew_every();
    loop {
        tokio::time::sleep_until(next.min(fence.valid_until())).await;
        if Instant::now() >= fence.valid_until() {
            fence.lose("it could not be renewed before it could run out".into());
            break;
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(
            fence.valid_until(),
            store.renew_lease(fence.claim(), settings.ttl),
        )
        .await
        {
            Ok(Ok(Some(lease))) => {
                fence.extend(sent + settings.trusted_for());
                connections.subscriber(status(&settings, LeaseRole::Active, Some(&lease)));
                next = sent + settings.renew_every();
            }
            Ok(Ok(None)) => {
                fence.lose("another instance took it".into());
                break;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "renewing the subscriber lease failed; trying again");
                next = Instant::now() + settings.renew_every() / 4;
            }
            Err(_) => {
                fence.lose("the store did not answer before it could run out".into());
                break;
            }
        }
    }
    if let Err(lost) = fence.check() {
        tracing::warn!(error = %lost, "subscriber lease lost");
    }
    connections.subscriber(status(&settings, LeaseRole::Standby, None));
    let _ = lost.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> LeaseClaim {
        LeaseClaim {
            name: "subscriber:/data/UserChangeEvent".into(),
            holder: "a".into(),
            epoch: 3,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fence_holds_until_its_time_and_moves_only_forward() {
        let fence = Fence::new(claim(), Instant::now() + Duration::from_secs(12));
        assert_eq!(fence.check(), Ok(()));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(fence.check(), Ok(()));
        fence.extend(Instant::now() - Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(1)).await;
        let lost = fence.check().unwrap_err();
        assert_eq!(lost.epoch, 3);
        assert!(
            lost.to_string().contains("could not be renewed in time"),
            "{lost}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_fence_stays_lost() {
        let fence = Fence::new(claim(), Instant::now() + Duration::from_secs(12));
        fence.lose("another instance took it".into());
        fence.extend(Instant::now() + Duration::from_secs(60));
        let lost = fence.check().unwrap_err();
        assert!(
            lost.to_string().contains("another instance took it"),
            "{lost}"
        );
    }

    #[test]
    fn the_holder_trusts_a_renewal_for_less_than_the_lease() {
        let settings = LeaseSettings::for_topic("/t", "a".into(), Duration::from_secs(15));
        assert_eq!(settings.name, "subscriber:/t");
        assert_eq!(settings.renew_every(), Duration::from_secs(5));
        assert_eq!(settings.trusted_for(), Duration::from_secs(12));
        assert!(settings.renew_every() * 2 < settings.trusted_for());
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_standby_takes_over_a_released_lease_and_a_holder_notices_a_takeover() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("lease.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let ttl = Duration::from_secs(3);
        let a = LeaseSettings::for_topic("/t", "a".into(), ttl);
        let b = LeaseSettings::for_topic("/t", "b".into(), ttl);
        let (board_a, board_b) = (Connections::new(), Connections::new());
        let (_stop, shutdown) = watch::channel(false);
        let held_a = acquire(store.clone(), &a, &board_a, shutdown.clone())
            .await
            .unwrap()
            .expect("a free lease is taken");
        assert_eq!(held_a.fence().claim().epoch, 1);
        let active = board_a.get(crate::connection::Side::Salesforce).subscriber;
        assert_eq!(active.map(|s| s.role), Some(LeaseRole::Active));

        let standby = {
            let (store, b, board_b, shutdown) =
                (store.clone(), b.clone(), board_b.clone(), shutdown.clone());
            tokio::spawn(async move { acquire(store, &b, &board_b, shutdown).await })
        };
        until("b stands by, naming a", || {
            board_b
                .get(crate::connection::Side::Salesforce)
                .subscriber
                .is_some_and(|s| s.role == LeaseRole::Standby && s.holder.as_deref() == Some("a"))
        })
        .await;
        held_a.release(&*store).await;
        let held_b = standby.await.unwrap().unwrap().expect("b takes over");
        assert_eq!(held_b.fence().claim().epoch, 2);
        assert_eq!(held_b.fence().check(), Ok(()));

        // Another instance takes the lease from under b (as after b was paused past it): b's
        // next renewal finds out, its fence closes and its stream is told to stop.
        store.release_lease(held_b.fence().claim()).await.unwrap();
        let LeaseAnswer::Granted(_) = store.take_lease(&b.name, "c", ttl).await.unwrap() else {
            panic!("a released lease is granted")
        };
        let mut lost = held_b.lost();
        tokio::time::timeout(Duration::from_secs(20), lost.wait_for(|l| *l))
            .await
            .expect("b notices")
            .unwrap();
        let error = held_b.fence().check().unwrap_err();
        assert!(
            error.to_string().contains("another instance took it"),
            "{error}"
        );
        let shown = board_b.get(crate::connection::Side::Salesforce).subscriber;
        assert_eq!(shown.map(|s| s.role), Some(LeaseRole::Standby));
    }
}
