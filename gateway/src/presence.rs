//! Presence of end users across gateways (protocol §3.5).
//!
//! **Design.** Every gateway knows exactly which end users have a connection on it (its
//! *local* set: a count of connections per user). Gateways tell each other about their local
//! sets on the bus subject `lc.v1.<project>.presence` with small JSON [`Wire`] messages:
//! `up` when a user's first local connection opens, `down` when their last one closed
//! *and* the debounce passed without a new one, and a `beat` every `heartbeat` listing the
//! gateway's whole local set of the project (so a peer that missed an `up` or a `down`, or
//! started later, converges). A `sync` asks every gateway to beat a project at once.
//!
//! A gateway that serves agents watching a project's inbox (or answers a who-is-online
//! query) keeps a *view* of that project: for each online end user, which gateways have them
//! and until when that claim holds (`ttl` after it was last heard). A user is online while
//! at least one claim holds. A gateway that dies stops beating: its claims expire after `ttl`,
//! so its users go offline within `ttl` + one sweep (the sweep runs every `heartbeat`). Each
//! gateway turns changes of its own view into `presence` events for its own watchers (through
//! an in-process hub, so the bus carries no per-watcher traffic); views of the same project
//! converge, so every watcher sees the same transitions.
//!
//! Debounce: a user whose last connection closes stays claimed for `debounce`; a reconnect to
//! the same gateway within it changes nothing, one to another gateway adds that gateway's claim
//! before this one's `down` removes its own: no offline/online flap either way.
//!
//! Hand-written (not NATS KV) so it runs unchanged on the in-process bus of `serve` and on
//! NATS, with nothing more than the [`Bus`] contract (at-most-once publish/subscribe); the
//! periodic beats make losses heal by themselves.
//!
//! Memory is bounded by what is real, never by client input: the local set by this gateway's
//! connections, a view by the users online in a project being watched here (one claim per
//! gateway holding them). The time-dependent logic is in [`PresenceState`], whose every
//! method takes `now` (an injected clock); [`Presence`] drives it with the runtime's clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use larachat_broker::{Bus, Hub, LocalBus};
use larachat_core::id::{EndUserId, ProjectId};
use larachat_core::protocol::{OnlineUser, PresenceStatus, ServerFrame, SharedFrame};
use larachat_core::subject::Subject;

/// Settings of presence.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// How long a user stays online after their last connection closed.
    pub debounce: Duration,
    /// Interval of a gateway's beats (its local sets) and of the expiry sweep.
    pub heartbeat: Duration,
    /// A gateway's claim that a user is online holds this long after it was last heard.
    pub ttl: Duration,
    /// How long a gateway that starts watching a project waits for its peers' beats before
    /// answering (the `watching` reply, a who-is-online query).
    pub sync_wait: Duration,
    /// Most users listed by a who-is-online answer.
    pub max_listed: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_secs(5),
            heartbeat: Duration::from_secs(5),
            ttl: Duration::from_secs(15),
            sync_wait: Duration::from_millis(250),
            max_listed: 1000,
        }
    }
}

/// Users per `beat` message (a large local set is sent in several).
const BEAT_CHUNK: usize = 500;
/// Wire messages waiting to be published, at most (oldest dropped: the next beat heals).
const MAX_PENDING: usize = 10_000;

/// What gateways tell each other on `lc.v1.<project>.presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Wire {
    Up { gw: Uuid, user: EndUserId },
    Down { gw: Uuid, user: EndUserId },
    Beat { gw: Uuid, users: Vec<EndUserId> },
    Sync { gw: Uuid },
}

/// A change of a view: a user came online or went offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub project: ProjectId,
    pub user: EndUserId,
    pub status: PresenceStatus,
}

struct Local {
    conns: u32,
    /// Set while the user has no connection left here: when the claim is withdrawn.
    down_at: Option<Instant>,
}

struct Claimed {
    since: DateTime<Utc>,
    /// Gateways claiming the user, each until when.
    by: Vec<(Uuid, Instant)>,
}

#[derive(Default)]
struct View {
    watchers: usize,
    users: HashMap<EndUserId, Claimed>,
}

/// The presence state machine of one gateway. Every method takes `now`.
pub struct PresenceState {
    gw: Uuid,
    config: PresenceConfig,
    local: HashMap<(ProjectId, EndUserId), Local>,
    views: HashMap<ProjectId, View>,
    next_beat: Option<Instant>,
    /// Messages to publish, oldest first (bounded).
    pending: VecDeque<(ProjectId, Wire)>,
}

impl PresenceState {
    pub fn new(gw: Uuid, config: PresenceConfig) -> Self {
        Self {
            gw,
            config,
            local: HashMap::new(),
            views: HashMap::new(),
            next_beat: None,
            pending: VecDeque::new(),
        }
    }

    fn queue(&mut self, project: ProjectId, wire: Wire) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((project, wire));
    }

    /// Takes the messages to publish.
    pub fn take_pending(&mut self) -> VecDeque<(ProjectId, Wire)> {
        std::mem::take(&mut self.pending)
    }

    /// A connection of `user` opened on this gateway.
    pub fn connect(&mut self, project: ProjectId, user: EndUserId) {
        match self.local.get_mut(&(project, user)) {
            Some(l) => {
                l.conns += 1;
                l.down_at = None;
            }
            None => {
                self.local.insert(
                    (project, user),
                    Local {
                        conns: 1,
                        down_at: None,
                    },
                );
                let gw = self.gw;
                self.queue(project, Wire::Up { gw, user });
            }
        }
    }

    /// A connection of `user` closed on this gateway.
    pub fn disconnect(&mut self, project: ProjectId, user: EndUserId, now: Instant) {
        if let Some(l) = self.local.get_mut(&(project, user)) {
            l.conns = l.conns.saturating_sub(1);
            if l.conns == 0 {
                l.down_at = Some(now + self.config.debounce);
            }
        }
    }

    /// Starts (or joins) watching a project. `true` if the view is new.
    pub fn watch(&mut self, project: ProjectId) -> bool {
        let view = self.views.entry(project).or_default();
        view.watchers += 1;
        view.watchers == 1
    }

    /// Stops watching. `true` if that was the last watcher (the view is gone).
    pub fn unwatch(&mut self, project: ProjectId) -> bool {
        let Some(view) = self.views.get_mut(&project) else {
            return false;
        };
        view.watchers = view.watchers.saturating_sub(1);
        if view.watchers == 0 {
            self.views.remove(&project);
            true
        } else {
            false
        }
    }

    /// Applies a message from a gateway (this one included: the bus echoes).
    pub fn receive(&mut self, project: ProjectId, wire: Wire, now: Instant) -> Vec<Change> {
        let ttl = self.config.ttl;
        let mut changes = Vec::new();
        match wire {
            Wire::Sync { .. } => {
                self.beat_project(project);
                return changes;
            }
            Wire::Up { gw, user } => {
                if let Some(view) = self.views.get_mut(&project) {
                    claim(view, project, user, gw, now + ttl, &mut changes);
                }
            }
            Wire::Beat { gw, users } => {
                if let Some(view) = self.views.get_mut(&project) {
                    for user in users {
                        claim(view, project, user, gw, now + ttl, &mut changes);
                    }
                }
            }
            Wire::Down { gw, user } => {
                if let Some(view) = self.views.get_mut(&project) {
                    if let Some(c) = view.users.get_mut(&user) {
                        c.by.retain(|(g, _)| *g != gw);
                        if c.by.is_empty() {
                            view.users.remove(&user);
                            changes.push(Change {
                                project,
                                user,
                                status: PresenceStatus::Offline,
                            });
                        }
                    }
                }
            }
        }
        changes
    }

    /// Queues a beat of this gateway's local set of `project`.
    fn beat_project(&mut self, project: ProjectId) {
        let users: Vec<EndUserId> = self
            .local
            .keys()
            .filter(|(p, _)| *p == project)
            .map(|(_, u)| *u)
            .collect();
        self.queue_beats(project, &users);
    }

    /// Queues beats for `users` of `project`, at most [`BEAT_CHUNK`] users per beat.
    fn queue_beats(&mut self, project: ProjectId, users: &[EndUserId]) {
        let gw = self.gw;
        for chunk in users.chunks(BEAT_CHUNK) {
            self.queue(
                project,
                Wire::Beat {
                    gw,
                    users: chunk.to_vec(),
                },
            );
        }
    }

    /// Periodic work: withdraws claims whose debounce passed, beats, expires the claims of
    /// silent gateways. Returns the views' changes.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let gw = self.gw;
        let expired: Vec<(ProjectId, EndUserId)> = self
            .local
            .iter()
            .filter(|(_, l)| l.down_at.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for (project, user) in expired {
            self.local.remove(&(project, user));
            self.queue(project, Wire::Down { gw, user });
        }
        if self.next_beat.is_none_or(|t| t <= now) {
            self.next_beat = Some(now + self.config.heartbeat);
            let mut by_project: HashMap<ProjectId, Vec<EndUserId>> = HashMap::new();
            for (p, u) in self.local.keys() {
                by_project.entry(*p).or_default().push(*u);
            }
            for (project, users) in by_project {
                self.queue_beats(project, &users);
            }
        }
        let mut changes = Vec::new();
        for (project, view) in &mut self.views {
            view.users.retain(|user, c| {
                c.by.retain(|(_, until)| *until > now);
                if c.by.is_empty() {
                    changes.push(Change {
                        project: *project,
                        user: *user,
                        status: PresenceStatus::Offline,
                    });
                    false
                } else {
                    true
                }
            });
        }
        changes
    }

    /// Users online in a watched project, at most `max`, oldest first; and whether there are
    /// more.
    pub fn online(&self, project: ProjectId, max: usize) -> (Vec<OnlineUser>, bool) {
        let Some(view) = self.views.get(&project) else {
            return (Vec::new(), false);
        };
        let mut users: Vec<OnlineUser> = view
            .users
            .iter()
            .map(|(u, c)| OnlineUser {
                user_id: *u,
                since: c.since,
            })
            .collect();
        users.sort_by_key(|u| (u.since, u.user_id));
        let truncated = users.len() > max;
        users.truncate(max);
        (users, truncated)
    }
}

fn claim(
    view: &mut View,
    project: ProjectId,
    user: EndUserId,
    gw: Uuid,
    until: Instant,
    changes: &mut Vec<Change>,
) {
    let c = view.users.entry(user).or_insert_with(|| {
        changes.push(Change {
            project,
            user,
            status: PresenceStatus::Online,
        });
        Claimed {
            since: larachat_core::model::now(),
            by: Vec::new(),
        }
    });
    match c.by.iter_mut().find(|(g, _)| *g == gw) {
        Some(entry) => entry.1 = until,
        None => c.by.push((gw, until)),
    }
}

/// A project watched here: its bus subscription and the gate that opens once the view has
/// heard its peers.
struct Watched {
    /// When the subscription opened and the `sync` went out.
    ready: Arc<OnceCell<Instant>>,
    stop: CancellationToken,
}

/// Presence of one gateway: the state machine, driven by the runtime's clock, the bus and
/// the in-process hub its watchers listen on. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<PresenceState>,
    watched: Mutex<HashMap<ProjectId, Watched>>,
    bus: Arc<dyn Bus>,
    /// Watchers' `presence` events: an in-process bus, one subject per project.
    local: Hub<SharedFrame>,
    local_bus: Arc<dyn Bus>,
    wake: Notify,
    config: PresenceConfig,
    shutdown: CancellationToken,
}

impl Presence {
    /// Starts presence for a gateway: the driver task runs on `tasks` until `shutdown`.
    pub fn start(
        bus: Arc<dyn Bus>,
        config: PresenceConfig,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let local_bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
        let local = Hub::new(local_bus.clone(), |m: &larachat_broker::BusMessage| {
            SharedFrame::from_json(m.payload.clone()).ok()
        });
        let p = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(PresenceState::new(Uuid::new_v4(), config.clone())),
                watched: Mutex::new(HashMap::new()),
                bus,
                local,
                local_bus,
                wake: Notify::new(),
                config,
                shutdown,
            }),
        };
        tasks.spawn(p.clone().drive());
        p
    }

    /// The hub on which a watcher registers for `Subject::presence(project)`.
    pub fn events(&self) -> &Hub<SharedFrame> {
        &self.inner.local
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.inner.config
    }

    /// An end user's connection opened; the returned guard closes it when dropped. The
    /// gateway also follows the project's presence subject while it has users of it, so it
    /// hears (and answers) a peer's `sync` at once.
    pub async fn connected(&self, project: ProjectId, user: EndUserId) -> Connected {
        let watch = match self.follow(project).await {
            Ok((w, _)) => Some(w),
            Err(e) => {
                // Still counted and announced; only `sync` requests go unheard until the
                // next connection (peers learn of this gateway's users from its beats).
                tracing::debug!(error = %e, "presence subscribe failed");
                None
            }
        };
        self.inner.state.lock().connect(project, user);
        self.inner.wake.notify_one();
        Connected {
            presence: self.clone(),
            project,
            user,
            _watch: watch,
        }
    }

    /// Starts watching `project` (its view kept while the guard lives). Returns once the view
    /// has heard its peers (`sync_wait` after the subscription opened).
    pub async fn watch(&self, project: ProjectId) -> Result<Watch, larachat_broker::BusError> {
        let (guard, opened) = self.follow(project).await?;
        tokio::time::sleep_until(opened + self.inner.config.sync_wait).await;
        Ok(guard)
    }

    /// Follows `project`'s presence subject (while the guard lives) without waiting for the
    /// view to fill. Returns when the subscription opened.
    async fn follow(
        &self,
        project: ProjectId,
    ) -> Result<(Watch, Instant), larachat_broker::BusError> {
        let (ready, stop) = {
            let mut watched = self.inner.watched.lock();
            self.inner.state.lock().watch(project);
            let w = watched.entry(project).or_insert_with(|| Watched {
                ready: Arc::new(OnceCell::new()),
                stop: CancellationToken::new(),
            });
            (w.ready.clone(), w.stop.clone())
        };
        let guard = Watch {
            presence: self.clone(),
            project,
        };
        let opened = *ready.get_or_try_init(|| self.open(project, stop)).await?;
        Ok((guard, opened))
    }

    /// Subscribes to the project's presence subject, asks peers to beat, waits for them.
    async fn open(
        &self,
        project: ProjectId,
        stop: CancellationToken,
    ) -> Result<Instant, larachat_broker::BusError> {
        let subject = Subject::presence(project);
        let mut stream = self.inner.bus.subscribe(&subject).await?;
        let me = self.clone();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    () = stop.cancelled() => break,
                    () = shutdown.cancelled() => break,
                };
                let Some(msg) = msg else {
                    tracing::debug!(%project, "presence subscription ended");
                    break;
                };
                let Ok(wire) = serde_json::from_slice::<Wire>(&msg.payload) else {
                    continue;
                };
                let changes = me.inner.state.lock().receive(project, wire, Instant::now());
                me.inner.wake.notify_one();
                me.announce(changes).await;
            }
        });
        let gw = self.inner.state.lock().gw;
        self.publish(project, &Wire::Sync { gw }).await;
        // Beat our own local set too (the bus echoes it into the view).
        self.inner.state.lock().beat_project(project);
        self.inner.wake.notify_one();
        Ok(Instant::now())
    }

    /// Users online in `project`, at most `max_listed`: watches it for the time of the query.
    pub async fn online(
        &self,
        project: ProjectId,
    ) -> Result<(Vec<OnlineUser>, bool), larachat_broker::BusError> {
        let _watch = self.watch(project).await?;
        Ok(self
            .inner
            .state
            .lock()
            .online(project, self.inner.config.max_listed))
    }

    async fn publish(&self, project: ProjectId, wire: &Wire) {
        let payload = Bytes::from(serde_json::to_vec(wire).unwrap_or_default());
        if let Err(e) = self
            .inner
            .bus
            .publish(&Subject::presence(project), payload)
            .await
        {
            tracing::debug!(error = %e, "presence publish failed; the next beat heals");
        }
    }

    /// Delivers view changes to this gateway's watchers.
    async fn announce(&self, changes: Vec<Change>) {
        for c in changes {
            let frame = ServerFrame::Presence {
                user_id: c.user,
                status: c.status,
                at: larachat_core::model::now(),
            };
            let payload =
                larachat_core::protocol::encode(&frame, larachat_core::protocol::Encoding::Json);
            let _ = self
                .inner
                .local_bus
                .publish(&Subject::presence(c.project), payload)
                .await;
        }
    }

    /// The driver: ticks every `heartbeat` (or at the next debounce deadline), publishes what
    /// the state machine queued.
    async fn drive(self) {
        let tick = self
            .inner
            .config
            .heartbeat
            .min(self.inner.config.debounce)
            .max(Duration::from_millis(10))
            / 2;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let changes = self.inner.state.lock().tick(Instant::now());
                    self.announce(changes).await;
                }
                () = self.inner.wake.notified() => {}
                () = self.inner.shutdown.cancelled() => break,
            }
            let pending = self.inner.state.lock().take_pending();
            for (project, wire) in pending {
                self.publish(project, &wire).await;
            }
        }
    }
}

/// An end user's connection, counted while this lives.
pub struct Connected {
    presence: Presence,
    project: ProjectId,
    user: EndUserId,
    _watch: Option<Watch>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.presence
            .inner
            .state
            .lock()
            .disconnect(self.project, self.user, Instant::now());
    }
}

/// A watched project, kept while this lives.
pub struct Watch {
    presence: Presence,
    project: ProjectId,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.presence.inner.watched.lock();
        if self.presence.inner.state.lock().unwatch(self.project) {
            if let Some(w) = watched.remove(&self.project) {
                w.stop.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PresenceConfig {
        PresenceConfig {
            debounce: Duration::from_secs(5),
            heartbeat: Duration::from_secs(5),
            ttl: Duration::from_secs(15),
            sync_wait: Duration::ZERO,
            max_listed: 2,
        }
    }

    /// Delivers every pending message of `from` to `to` (the bus).
    fn relay(from: &mut PresenceState, to: &mut [&mut PresenceState], now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for (p, w) in from.take_pending() {
            for t in to.iter_mut() {
                changes.extend(t.receive(p, w.clone(), now));
            }
        }
        changes
    }

    #[test]
    fn debounce_hides_a_quick_reconnect_and_offline_follows_the_last_close() {
        let t0 = Instant::now();
        let p = ProjectId::new_v7();
        let u = EndUserId::new_v7();
        let mut a = PresenceState::new(Uuid::new_v4(), config());
        assert!(a.watch(p));
        a.connect(p, u);
        let ch = {
            let pending = a.take_pending();
            let mut ch = Vec::new();
            for (pp, w) in pending {
                ch.extend(a.receive(pp, w, t0));
            }
            ch
        };
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].status, PresenceStatus::Online);
        // Closed, reopened within the debounce: no message, no change.
        a.disconnect(p, u, t0);
        a.connect(p, u);
        let _ = a.tick(t0 + Duration::from_secs(6));
        assert!(
            a.take_pending()
                .iter()
                .all(|(_, w)| !matches!(w, Wire::Down { .. }))
        );
        // Closed for good: `down` only after the debounce.
        a.disconnect(p, u, t0 + Duration::from_secs(7));
        let _ = a.tick(t0 + Duration::from_secs(11));
        assert!(
            a.take_pending()
                .iter()
                .all(|(_, w)| !matches!(w, Wire::Down { .. }))
        );
        let _ = a.tick(t0 + Duration::from_secs(12));
        let pending = a.take_pending();
        let mut ch = Vec::new();
        for (pp, w) in pending {
            ch.extend(a.receive(pp, w, t0 + Duration::from_secs(12)));
        }
        assert_eq!(
            ch,
            vec![Change {
                project: p,
                user: u,
                status: PresenceStatus::Offline
            }]
        );
        assert!(a.online(p, 10).0.is_empty());
    }

    #[test]
    fn two_gateways_one_user_online_until_both_close_and_a_dead_gateway_expires() {
        let t0 = Instant::now();
        let p = ProjectId::new_v7();
        let u = EndUserId::new_v7();
        let mut a = PresenceState::new(Uuid::new_v4(), config());
        let mut b = PresenceState::new(Uuid::new_v4(), config());
        a.watch(p);
        // u on b only: a's view hears b's `up`, then b's `down` after the debounce.
        b.connect(p, u);
        let ch = relay(&mut b, &mut [&mut a], t0);
        assert_eq!(
            ch,
            vec![Change {
                project: p,
                user: u,
                status: PresenceStatus::Online
            }]
        );
        b.disconnect(p, u, t0);
        let _ = b.tick(t0 + Duration::from_secs(6));
        let ch = relay(&mut b, &mut [&mut a], t0 + Duration::from_secs(6));
        assert!(
            ch.iter()
                .any(|c| c.user == u && c.status == PresenceStatus::Offline)
        );

        // Both gateways claim v; v's connection on b closes: still online via a.
        let v = EndUserId::new_v7();
        a.connect(p, v);
        b.connect(p, v);
        let t1 = t0 + Duration::from_secs(7);
        for (pp, w) in a.take_pending() {
            a.receive(pp, w, t1);
        }
        relay(&mut b, &mut [&mut a], t1);
        b.disconnect(p, v, t1);
        let _ = b.tick(t1 + Duration::from_secs(6));
        let ch = relay(&mut b, &mut [&mut a], t1 + Duration::from_secs(6));
        assert!(!ch.iter().any(|c| c.user == v), "{ch:?}");
        assert!(a.online(p, 10).0.iter().any(|o| o.user_id == v));

        // b claims w and dies (no down, no beats): w expires after the ttl.
        let w = EndUserId::new_v7();
        b.connect(p, w);
        let t2 = t1 + Duration::from_secs(7);
        relay(&mut b, &mut [&mut a], t2);
        assert!(a.online(p, 10).0.iter().any(|o| o.user_id == w));
        // a keeps beating its own users (echoed to itself), b is silent.
        let mut offline_at = None;
        for s in 1..=20 {
            let now = t2 + Duration::from_secs(s);
            let mut ch = a.tick(now);
            for (pp, wire) in a.take_pending() {
                ch.extend(a.receive(pp, wire, now));
            }
            if ch
                .iter()
                .any(|c| c.user == w && c.status == PresenceStatus::Offline)
            {
                offline_at = Some(s);
                break;
            }
        }
        assert_eq!(
            offline_at,
            Some(15),
            "w offline exactly when b's claim expired"
        );
        assert!(
            a.online(p, 10).0.iter().any(|o| o.user_id == v),
            "v held by a"
        );
    }

    #[test]
    fn the_list_is_capped_and_says_so() {
        let t0 = Instant::now();
        let p = ProjectId::new_v7();
        let mut a = PresenceState::new(Uuid::new_v4(), config());
        a.watch(p);
        for _ in 0..3 {
            a.connect(p, EndUserId::new_v7());
        }
        for (pp, w) in a.take_pending() {
            a.receive(pp, w, t0);
        }
        let (users, truncated) = a.online(p, 2);
        assert_eq!(users.len(), 2);
        assert!(truncated);
        assert!(a.unwatch(p));
        assert!(a.online(p, 2).0.is_empty());
    }
}
