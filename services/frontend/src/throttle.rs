//! Rate limits per queue and per caller (`governor`): sends (messages and bytes), receives and
//! deletes. A queue's limit bounds all its callers together; a caller's bounds one caller across
//! every queue. Both are cluster-wide figures: each of N frontends admits its share, the limit
//! divided by N, N being the frontends registered in the metadata store. A request over a limit
//! is refused whole before anything is written, with RESOURCE_EXHAUSTED naming the limit and a
//! `retry-after-ms` saying when it would pass.
//!
//! The split is an approximation. It is exact when the load balancer spreads a queue's traffic
//! evenly; a caller whose requests all reach one frontend gets 1/N of its limit. While a
//! frontend joins or leaves, the others learn the new N within a registration period (a few
//! seconds), so for that long the cluster admits up to the limit times N±1 over N. Bursts of up
//! to one second's share (at least one batch) pass at once on every frontend.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use parking_lot::RwLock;
use sluice_api::limits::{MAX_BATCH_ENTRIES, MAX_MAX_MESSAGE_BYTES};
use sluice_api::{Error, QueueId, QueueRecord, RateLimits, Result};
use tonic::metadata::MetadataMap;

use crate::auth::Identity;
use crate::metrics;

pub use sluice_client::CLIENT_ID;
const MAX_CLIENT_ID_LEN: usize = 128;

/// Limiters kept at most: one per queue or caller and kind of limit, a few dozen bytes each.
/// Past it they are all dropped and start again full, which only forgives a burst.
const MAX_LIMITERS: usize = 200_000;

/// Whom the per-caller limits count a request against: its authenticated principal; a caller
/// let in without credentials (standalone on loopback, `--insecure`) by the client id it
/// carries, else by its peer's IP address (every connection of one host is one caller).
#[derive(Debug, Clone)]
pub struct Caller {
    id: Arc<str>,
    identity: Identity,
}

impl PartialEq for Caller {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Caller {}

impl std::hash::Hash for Caller {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}

impl Caller {
    pub fn of(
        identity: Identity,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<Caller> {
        if !identity.anonymous {
            return Ok(Caller {
                id: identity.name().into(),
                identity,
            });
        }
        let id = match metadata.get(CLIENT_ID) {
            Some(value) => {
                let id = value.to_str().unwrap_or_default();
                let valid = (1..=MAX_CLIENT_ID_LEN).contains(&id.len())
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._:@/-".contains(c));
                if !valid {
                    return Err(Error::invalid(
                        CLIENT_ID,
                        format!(
                            "metadata entry must be 1 to {MAX_CLIENT_ID_LEN} characters of A-Z, \
                             a-z, 0-9 and ._:@/-"
                        ),
                    ));
                }
                id.into()
            }
            None => peer
                .map_or_else(|| "unknown".to_owned(), |peer| peer.ip().to_string())
                .into(),
        };
        Ok(Caller { id, identity })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// An anonymous caller by that id, for tests of the limits.
impl From<&str> for Caller {
    fn from(id: &str) -> Self {
        Caller {
            id: id.into(),
            identity: Identity::anonymous(),
        }
    }
}

/// The rate limits a frontend enforces, as configured (cluster-wide figures).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitOpts {
    /// Limits of each queue that sets none of its own (`sluice queue set`).
    pub queue_default: RateLimits,
    /// Limits of each caller not named in `callers`.
    pub caller_default: RateLimits,
    /// Limits of named callers (principals; without authentication, client ids or IP
    /// addresses), in place of `caller_default`.
    pub callers: BTreeMap<String, RateLimits>,
}

/// The defaults a frontend ships with: queues unlimited until given limits, each caller bounded
/// well above what one client process reaches, so one runaway client cannot take every
/// frontend's capacity while ordinary ones never notice.
impl Default for RateLimitOpts {
    fn default() -> Self {
        RateLimitOpts {
            queue_default: RateLimits::default(),
            caller_default: RateLimits {
                send_messages_per_second: Some(200_000),
                send_bytes_per_second: Some(512 * 1024 * 1024),
                receives_per_second: Some(100_000),
                deletes_per_second: Some(200_000),
            },
            callers: BTreeMap::new(),
        }
    }
}

impl RateLimitOpts {
    /// No limit on anything.
    pub fn unlimited() -> Self {
        RateLimitOpts {
            queue_default: RateLimits::default(),
            caller_default: RateLimits::default(),
            callers: BTreeMap::new(),
        }
    }

    /// Checks every configured limit, naming the one out of range.
    pub fn check(&self) -> Result<()> {
        sluice_api::limits::configured_rate_limits(
            "rate_limits.queue_default",
            &self.queue_default,
        )?;
        sluice_api::limits::configured_rate_limits(
            "rate_limits.caller_default",
            &self.caller_default,
        )?;
        for (caller, limits) in &self.callers {
            sluice_api::limits::configured_rate_limits(
                &format!("rate_limits.callers.{caller}"),
                limits,
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    SendMessages,
    SendBytes,
    Receives,
    Deletes,
}

impl Kind {
    fn of(self, limits: &RateLimits) -> Option<u32> {
        match self {
            Kind::SendMessages => limits.send_messages_per_second,
            Kind::SendBytes => limits.send_bytes_per_second,
            Kind::Receives => limits.receives_per_second,
            Kind::Deletes => limits.deletes_per_second,
        }
    }

    /// What the limit counts, for a message.
    fn unit(self) -> &'static str {
        match self {
            Kind::SendMessages => "messages sent",
            Kind::SendBytes => "bytes sent",
            Kind::Receives => "receives",
            Kind::Deletes => "deletes",
        }
    }

    /// The smallest burst: one request of the largest size must be able to pass.
    fn min_burst(self) -> u32 {
        match self {
            Kind::SendMessages | Kind::Deletes => MAX_BATCH_ENTRIES as u32,
            Kind::SendBytes => MAX_BATCH_ENTRIES as u32 * MAX_MAX_MESSAGE_BYTES,
            Kind::Receives => 1,
        }
    }

    fn reason(self, scope: &Scope) -> &'static str {
        match (scope, self) {
            (Scope::Queue(_), Kind::SendMessages) => "queue_send_messages",
            (Scope::Queue(_), Kind::SendBytes) => "queue_send_bytes",
            (Scope::Queue(_), Kind::Receives) => "queue_receives",
            (Scope::Queue(_), Kind::Deletes) => "queue_deletes",
            (Scope::Caller(_), Kind::SendMessages) => "caller_send_messages",
            (Scope::Caller(_), Kind::SendBytes) => "caller_send_bytes",
            (Scope::Caller(_), Kind::Receives) => "caller_receives",
            (Scope::Caller(_), Kind::Deletes) => "caller_deletes",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    Queue(QueueId),
    Caller(Caller),
}

/// A limiter is made for one share of one limit: when either changes (`sluice queue set`, a
/// frontend joins) the next request finds no limiter under the new key and starts a new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    scope: Scope,
    kind: Kind,
    share: u32,
}

/// How many frontends share the cluster-wide limits; at least one.
#[derive(Debug, Clone)]
pub struct Frontends(Arc<AtomicU32>);

impl Default for Frontends {
    fn default() -> Self {
        Frontends(Arc::new(AtomicU32::new(1)))
    }
}

impl Frontends {
    pub fn set(&self, count: u32) {
        self.0.store(count.max(1), Ordering::Relaxed);
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed).max(1)
    }
}

type Limiter<C> =
    governor::RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limiters of one frontend; `C` is the clock they run on (a fake one in tests).
pub struct RateLimiter<C: Clock = DefaultClock> {
    opts: RateLimitOpts,
    frontends: Frontends,
    /// Read on every request, so a plain map behind a read-write lock rather than a cache
    /// that does bookkeeping on each read.
    limiters: RwLock<HashMap<Key, Arc<Limiter<C>>>>,
    clock: C,
}

/// One limit a request is held to.
struct Check<'a> {
    scope: Scope,
    kind: Kind,
    limit: u32,
    queue: &'a str,
}

impl RateLimiter {
    pub fn new(opts: RateLimitOpts, frontends: Frontends) -> Self {
        RateLimiter::with_clock(opts, frontends, DefaultClock::default())
    }
}

impl<C> RateLimiter<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    pub fn with_clock(opts: RateLimitOpts, frontends: Frontends, clock: C) -> Self {
        RateLimiter {
            opts,
            frontends,
            limiters: RwLock::new(HashMap::new()),
            clock,
        }
    }

    /// The limits in force for `queue`: its own, else the default.
    pub fn queue_limits(&self, queue: &QueueRecord) -> RateLimits {
        queue.attributes.rate_limits.or(&self.opts.queue_default)
    }

    fn caller_limits(&self, caller: &Caller) -> &RateLimits {
        self.opts
            .callers
            .get(caller.as_str())
            .unwrap_or(&self.opts.caller_default)
    }

    /// Takes `n` from the limiter of `check`, or says how long until they would be there.
    fn take(&self, check: &Check<'_>, n: u32) -> std::result::Result<(), (Duration, u32)> {
        let frontends = self.frontends.get();
        let share = check.limit.div_ceil(frontends).max(1);
        let key = Key {
            scope: check.scope.clone(),
            kind: check.kind,
            share,
        };
        let found = self.limiters.read().get(&key).cloned();
        let limiter = match found {
            Some(limiter) => limiter,
            None => {
                let mut limiters = self.limiters.write();
                if limiters.len() >= MAX_LIMITERS {
                    limiters.clear();
                }
                limiters
                    .entry(key)
                    .or_insert_with(|| {
                        let rate = NonZeroU32::new(share).unwrap_or(NonZeroU32::MIN);
                        let burst =
                            NonZeroU32::new(share.max(check.kind.min_burst())).unwrap_or(rate);
                        Arc::new(governor::RateLimiter::direct_with_clock(
                            Quota::per_second(rate).allow_burst(burst),
                            self.clock.clone(),
                        ))
                    })
                    .clone()
            }
        };
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err((not_until.wait_time_from(self.clock.now()), share)),
            // More than a whole burst at once: never passes this share as it stands.
            Err(_) => Err((Duration::from_secs(1), share)),
        }
    }

    fn refusal(&self, check: &Check<'_>, share: u32, wait: Duration) -> Error {
        let reason = check.kind.reason(&check.scope);
        metrics::throttled(reason, check.queue);
        let whose = match &check.scope {
            Scope::Queue(_) => format!("queue {:?}", check.queue),
            Scope::Caller(caller) => {
                format!("caller {:?} on queue {:?}", caller.as_str(), check.queue)
            }
        };
        let frontends = self.frontends.get();
        let split = if frontends > 1 {
            format!(" ({share} on each of {frontends} frontends)")
        } else {
            String::new()
        };
        // Rounded up, so a client that waits exactly this long passes.
        let retry_after = Duration::from_millis(wait.as_millis() as u64 + 1);
        Error::Throttled {
            message: format!(
                "throttled: {whose} is over its limit of {} {} per second{split}; retry after {} ms",
                check.limit,
                check.kind.unit(),
                retry_after.as_millis()
            ),
            retry_after,
        }
    }

    /// Admits `n` units of `kind` (messages, receives, handles) by `caller` on `queue`, or
    /// refuses with RESOURCE_EXHAUSTED.
    pub(crate) fn admit(
        &self,
        caller: &Caller,
        queue: &QueueRecord,
        kind: Kind,
        n: usize,
    ) -> Result<()> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let caller_limit = kind.of(self.caller_limits(caller)).map(|limit| Check {
            scope: Scope::Caller(caller.clone()),
            kind,
            limit,
            queue: &queue.name,
        });
        let queue_limit = kind.of(&self.queue_limits(queue)).map(|limit| Check {
            scope: Scope::Queue(queue.id),
            kind,
            limit,
            queue: &queue.name,
        });
        for check in caller_limit.iter().chain(&queue_limit) {
            if let Err((wait, share)) = self.take(check, n) {
                return Err(self.refusal(check, share, wait));
            }
        }
        Ok(())
    }

    /// Admits a send of `messages` holding `bytes`, both limits or neither.
    pub(crate) fn admit_send(
        &self,
        caller: &Caller,
        queue: &QueueRecord,
        messages: usize,
        bytes: usize,
    ) -> Result<()> {
        self.admit(caller, queue, Kind::SendMessages, messages)?;
        self.admit(caller, queue, Kind::SendBytes, bytes)
    }

    /// Waits until `n` units of `kind` are admitted: a Consume stream has no request to refuse,
    /// so it is slowed down instead.
    pub(crate) async fn wait(&self, caller: &Caller, queue: &QueueRecord, kind: Kind, n: usize) {
        loop {
            match self.admit(caller, queue, kind, n) {
                Ok(()) => return,
                Err(Error::Throttled { retry_after, .. }) => tokio::time::sleep(retry_after).await,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    /// A limiter whose time moves only when the test moves it.
    fn limiter(
        opts: RateLimitOpts,
        frontends: Frontends,
    ) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            RateLimiter::with_clock(opts, frontends, clock.clone()),
            clock,
        )
    }

    fn queue(id: QueueId, limits: RateLimits) -> QueueRecord {
        let mut record = QueueRecord {
            id,
            name: format!("q{id}"),
            attributes: Default::default(),
            tags: Default::default(),
            created_at_ms: 0,
            modified_at_ms: 0,
            purged_at_ms: 0,
        };
        record.attributes.rate_limits = limits;
        record
    }

    fn sends(n: u32) -> RateLimits {
        RateLimits {
            send_messages_per_second: Some(n),
            ..Default::default()
        }
    }

    #[test]
    fn a_queue_over_its_limit_is_refused_with_when_to_retry() {
        let (limiter, clock) = limiter(RateLimitOpts::unlimited(), Frontends::default());
        let q = queue(1, sends(20));
        let caller = Caller::from("a");
        limiter.admit(&caller, &q, Kind::SendMessages, 20).unwrap();
        let err = limiter
            .admit(&caller, &q, Kind::SendMessages, 10)
            .unwrap_err();
        let Error::Throttled {
            message,
            retry_after,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            message.contains("queue \"q1\"") && message.contains("limit of 20 messages sent"),
            "{message}"
        );
        // Ten messages at 20 a second come back in half a second.
        assert_eq!(*retry_after, Duration::from_millis(501));
        clock.advance(Duration::from_millis(499));
        limiter
            .admit(&caller, &q, Kind::SendMessages, 10)
            .unwrap_err();
        clock.advance(Duration::from_millis(2));
        limiter.admit(&caller, &q, Kind::SendMessages, 10).unwrap();
        // Another queue has its own limiter.
        limiter
            .admit(&caller, &queue(2, sends(20)), Kind::SendMessages, 20)
            .unwrap();
    }

    #[test]
    fn a_batch_over_what_is_left_is_refused_whole() {
        let (limiter, _clock) = limiter(RateLimitOpts::unlimited(), Frontends::default());
        let q = queue(1, sends(15));
        let caller = Caller::from("a");
        limiter.admit(&caller, &q, Kind::SendMessages, 10).unwrap();
        // Five are left: a batch of ten takes none of them, and five still pass.
        limiter
            .admit(&caller, &q, Kind::SendMessages, 10)
            .unwrap_err();
        limiter.admit(&caller, &q, Kind::SendMessages, 5).unwrap();
    }

    #[test]
    fn each_frontend_admits_its_share_of_the_limit() {
        let frontends = Frontends::default();
        let (limiter, _clock) = limiter(RateLimitOpts::unlimited(), frontends.clone());
        let q = queue(1, sends(100));
        let caller = Caller::from("a");
        frontends.set(4);
        limiter.admit(&caller, &q, Kind::SendMessages, 25).unwrap();
        let err = limiter
            .admit(&caller, &q, Kind::SendMessages, 1)
            .unwrap_err();
        assert!(
            err.to_string().contains("(25 on each of 4 frontends)"),
            "{err}"
        );
        // One frontend left: a new limiter with the whole limit.
        frontends.set(1);
        limiter.admit(&caller, &q, Kind::SendMessages, 100).unwrap();
    }

    #[test]
    fn callers_are_limited_apart_by_their_own_limits() {
        let opts = RateLimitOpts {
            caller_default: sends(10),
            callers: BTreeMap::from([("big".to_owned(), sends(1000))]),
            ..RateLimitOpts::unlimited()
        };
        let (limiter, _clock) = limiter(opts, Frontends::default());
        let q = queue(1, RateLimits::default());
        let (small, other, big) = (
            Caller::from("small"),
            Caller::from("other"),
            Caller::from("big"),
        );
        limiter.admit(&small, &q, Kind::SendMessages, 10).unwrap();
        let err = limiter
            .admit(&small, &q, Kind::SendMessages, 1)
            .unwrap_err();
        assert!(
            err.to_string().contains("caller \"small\" on queue \"q1\""),
            "{err}"
        );
        limiter.admit(&other, &q, Kind::SendMessages, 10).unwrap();
        limiter.admit(&big, &q, Kind::SendMessages, 1000).unwrap();
    }

    #[test]
    fn an_authenticated_caller_is_its_principal_else_the_client_id_or_the_peer_host() {
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let anonymous = Identity::anonymous;
        let mut metadata = MetadataMap::new();
        assert_eq!(
            Caller::of(anonymous(), &metadata, Some(peer))
                .unwrap()
                .as_str(),
            "10.1.2.3"
        );
        metadata.insert(CLIENT_ID, "team-a".parse().unwrap());
        assert_eq!(
            Caller::of(anonymous(), &metadata, Some(peer))
                .unwrap()
                .as_str(),
            "team-a"
        );
        let principal = Identity {
            principal: Arc::new(sluice_api::Principal::new("svc", false, 0)),
            anonymous: false,
        };
        assert_eq!(
            Caller::of(principal, &metadata, Some(peer))
                .unwrap()
                .as_str(),
            "svc",
            "a principal's client id does not make it another caller"
        );
        metadata.insert(CLIENT_ID, "no spaces".parse().unwrap());
        let err = Caller::of(anonymous(), &metadata, Some(peer)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains(CLIENT_ID), "{err}");
    }

    #[test]
    fn configured_limits_are_checked() {
        let opts = RateLimitOpts {
            callers: BTreeMap::from([(
                "x".to_owned(),
                RateLimits {
                    send_bytes_per_second: Some(10),
                    ..Default::default()
                },
            )]),
            ..RateLimitOpts::unlimited()
        };
        let err = opts.check().unwrap_err();
        assert!(
            err.to_string()
                .contains("rate_limits.callers.x.send_bytes_per_second"),
            "{err}"
        );
        RateLimitOpts::default().check().unwrap();
    }
}
