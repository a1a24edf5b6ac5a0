//! The in-memory store of the `payloads` target keeps the `Store` contract:
//! chat-bridge's conformance suite, one test per check.

use chatmq_fuzz::memstore::MemStore;
use std::sync::Arc;

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            chat_bridge::store::conformance::$name(Arc::new(MemStore::new())).await;
        }
    )*};
}

chat_bridge::for_each_conformance_check!(conformance_tests);
