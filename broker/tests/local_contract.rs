//! The bus contract suite (`larachat_broker::contract`) run against [`LocalBus`].

use std::sync::Arc;

use larachat_broker::{Bus, LocalBus, contract};

fn bus() -> Arc<dyn Bus> {
    Arc::new(LocalBus::new())
}

macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                contract::$check(bus()).await;
            }
        )*
    };
}

contract_tests!(
    ping_answers,
    delivers_in_publish_order,
    every_subscriber_receives,
    subjects_are_isolated,
    dropping_a_subscription_affects_no_one_else,
    publishing_without_subscribers_succeeds_and_is_not_retained,
    slow_subscriber_does_not_block_publish,
    payloads_arrive_unchanged,
    hub_opens_one_bus_subscription_per_subject,
    hub_decodes_once_and_shares_one_arc,
    hub_cancels_overflow_of_the_full_sink_only,
    hub_last_drop_unsubscribes,
    hub_prunes_closed_sinks,
    hub_concurrent_first_subscribers_share_one_subscription,
    hub_unsubscribe_racing_subscribe_keeps_delivery,
    hub_churn_leaves_nothing,
);

/// The whole suite on one bus instance: checks must not depend on a fresh bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_bus() {
    contract::run_all(bus()).await;
}
