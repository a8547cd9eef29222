//! `worker::run_consumer` over the event-log interface of `larachat-core` (issue 11 part A).
//! The real event logs (the SQLite outbox, JetStream) live on the `events` branch and are not
//! merged here yet, so this drives the consumer with a minimal log in the test that keeps the
//! interface's promise: an event is handed out again until it is acknowledged.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use larachat_core::event::{
    Acker, ConsumerName, ConsumerOptions, Delivery, DomainEvent, EventConsumer, EventKind,
    EventLog, EventLogError,
};
use larachat_core::id::{ConversationId, EndUserId, EventId, MessageId, ProjectId};
use larachat_core::model::{Actor, ActorKind, EndUser, Message};
use larachat_webhooks::model::{DeliveryQuery, Endpoint, EndpointId, EventFilter};
use larachat_webhooks::signing::Secret;
use larachat_webhooks::store::SqliteWebhookStore;
use larachat_webhooks::worker::run_consumer;
use larachat_webhooks::{
    ClientSettings, DeliveryClient, Dispatcher, ManualClock, RetryPolicy, WebhookStore,
};

#[derive(Default)]
struct Log {
    events: Vec<DomainEvent>,
    acked: HashSet<EventId>,
    /// Handed out and not acknowledged (a worker is on them).
    held: HashSet<EventId>,
}

#[derive(Clone, Default)]
struct TestLog {
    inner: Arc<Mutex<Log>>,
    acks: Arc<Notify>,
}

impl TestLog {
    /// What a restart of the log's consumers does: every unacknowledged event comes again;
    /// `forget_acks` also drops the checkpoint (an ack lost in a crash).
    fn restart(&self, forget_acks: bool) {
        let mut l = self.inner.lock();
        l.held.clear();
        if forget_acks {
            l.acked.clear();
        }
    }

    async fn wait_all_acked(&self) {
        loop {
            let notified = self.acks.notified();
            {
                let l = self.inner.lock();
                if l.acked.len() == l.events.len() {
                    return;
                }
            }
            tokio::time::timeout(Duration::from_secs(10), notified)
                .await
                .expect("acks within 10 s");
        }
    }
}

struct TestAcker {
    log: TestLog,
    id: EventId,
}

#[async_trait]
impl Acker for TestAcker {
    async fn ack(self: Box<Self>) -> Result<(), EventLogError> {
        {
            let mut l = self.log.inner.lock();
            l.held.remove(&self.id);
            l.acked.insert(self.id);
        }
        self.log.acks.notify_waiters();
        Ok(())
    }
}

struct TestConsumer(TestLog);

#[async_trait]
impl EventConsumer for TestConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, EventLogError> {
        let batch: Vec<DomainEvent> = {
            let mut l = self.0.inner.lock();
            let mut out = Vec::new();
            for e in l.events.clone() {
                if out.len() < max && !l.acked.contains(&e.id) && !l.held.contains(&e.id) {
                    l.held.insert(e.id);
                    out.push(e);
                }
            }
            out
        };
        if batch.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
        }
        Ok(batch
            .into_iter()
            .map(|e| {
                let id = e.id;
                Delivery::new(
                    e,
                    1,
                    Box::new(TestAcker {
                        log: self.0.clone(),
                        id,
                    }),
                )
            })
            .collect())
    }
}

#[async_trait]
impl EventLog for TestLog {
    async fn consumer(
        &self,
        name: &ConsumerName,
        _options: ConsumerOptions,
    ) -> Result<Box<dyn EventConsumer>, EventLogError> {
        assert_eq!(name.as_str(), "webhooks");
        Ok(Box::new(TestConsumer(self.clone())))
    }
}

fn message(project: ProjectId) -> DomainEvent {
    DomainEvent::message_sent(&Message {
        id: MessageId::following(None),
        seq: 1,
        project_id: project,
        conversation_id: ConversationId::new_v7(),
        sender: Actor {
            kind: ActorKind::Agent,
            id: "ada".into(),
            name: None,
        },
        text: "hi".into(),
        metadata: serde_json::json!({}),
        client_msg_id: None,
        created_at: larachat_core::model::now(),
    })
}

fn user(project: ProjectId) -> DomainEvent {
    let now = larachat_core::model::now();
    DomainEvent::user_created(&EndUser {
        id: EndUserId::new_v7(),
        project_id: project,
        user_identifier: Some("u-1".into()),
        name: None,
        email: None,
        avatar: None,
        metadata: serde_json::json!({}),
        is_anonymous: false,
        last_seen_at: None,
        created_at: now,
        updated_at: now,
    })
}

#[tokio::test]
async fn events_become_one_delivery_per_matching_endpoint_even_when_the_log_redelivers() {
    let store: Arc<dyn WebhookStore> = Arc::new(SqliteWebhookStore::in_memory().unwrap());
    let (p, other) = (ProjectId::new_v7(), ProjectId::new_v7());
    let now = larachat_core::model::now();
    let endpoint = |project, filter| Endpoint {
        id: EndpointId::new_v7(),
        project_id: project,
        url: "https://hooks.example.com/in".into(),
        description: String::new(),
        filter,
        enabled: true,
        disabled_reason: None,
        secret: Secret::generate(),
        previous_secret: None,
        created_at: now,
        updated_at: now,
    };
    let messages_only = endpoint(p, EventFilter::Only(vec![EventKind::MessageSent]));
    let everything = endpoint(p, EventFilter::All);
    let mut disabled = endpoint(p, EventFilter::All);
    disabled.enabled = false;
    for e in [&messages_only, &everything, &disabled] {
        store.create_endpoint(e).await.unwrap();
    }

    let log = TestLog::default();
    {
        let mut l = log.inner.lock();
        for i in 0..10 {
            l.events.push(if i % 3 == 0 { user(p) } else { message(p) });
        }
        l.events.push(message(other)); // no endpoint in that project
    }
    let messages = 6;
    let users = 4;

    // The dispatcher's loop is not running: only the consumer, which only queues.
    let dispatcher = Dispatcher::new(
        store.clone(),
        DeliveryClient::new(ClientSettings::default()).unwrap(),
        Arc::new(ManualClock::starting_at(now)),
        RetryPolicy::default(),
        Duration::from_secs(10),
    );
    let count = |e: EndpointId| {
        let store = store.clone();
        async move {
            let q = DeliveryQuery {
                limit: 1000,
                ..DeliveryQuery::default()
            };
            store.list_deliveries(p, e, &q).await.unwrap().len()
        }
    };

    for round in 0..3 {
        let stop = CancellationToken::new();
        // Two workers of the consumer, as two control-plane processes.
        let workers: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(run_consumer(
                    Arc::new(log.clone()) as Arc<dyn EventLog>,
                    dispatcher.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        log.wait_all_acked().await;
        stop.cancel();
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(count(messages_only.id).await, messages, "round {round}");
        assert_eq!(
            count(everything.id).await,
            messages + users,
            "round {round}"
        );
        assert_eq!(count(disabled.id).await, 0, "round {round}");
        // The log hands everything out again (a lost checkpoint): nothing is queued twice.
        log.restart(true);
    }
}
