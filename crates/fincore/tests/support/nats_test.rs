//! NATS JetStream for the tests that drive `fincore cdc` and `fincore project --nats`: the
//! server on 127.0.0.1:4222 (`scripts/services` starts it) and a JetStream context on it.
//! Included by those test files (`#[path]`, `mod nats_test`): each names its own subjects and streams.

pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A JetStream context on the test server, connected on `runtime`.
pub fn connect(runtime: &tokio::runtime::Runtime) -> async_nats::jetstream::Context {
    runtime.block_on(async {
        let client = async_nats::connect(NATS_URL)
            .await
            .expect("NATS with JetStream on 127.0.0.1:4222 (scripts/services starts it)");
        async_nats::jetstream::new(client)
    })
}
