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

larachat_broker::for_each_bus_check!(contract_tests);

/// The whole suite on one bus instance: checks must not depend on a fresh bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_bus() {
    contract::run_all(bus()).await;
}
