//! End-to-end chat flows (`chat_suite.rs`) on the embedded store.

mod chat_suite;

chat_suite::chat_suite!(tests::Store::Embedded);
